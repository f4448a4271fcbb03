//! The simulator against the in-process mock relay, on real profiles.

use std::collections::HashSet;
use std::time::Instant;

use crate::client::CallError;
use crate::mock_relay::{self, ENROLLMENT_TOKEN};
use crate::profiles::{default_data_dir, load_profiles};
use crate::{Behaviour, Fleet, RelayClient};

fn behaviour() -> Behaviour {
    Behaviour {
        install_probability: 1.0,
        max_installs: 3,
        install_failure_rate: 0.2,
        reboot_failure_rate: 0.2,
        ..Behaviour::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fleet_against_mock_relay() -> anyhow::Result<()> {
    let (url, state) = mock_relay::start().await?;
    let profiles = load_profiles(&default_data_dir())?;
    let mut fleet = Fleet::with_behaviour(&profiles, 60, 9, behaviour())?;
    let client = RelayClient::new(&url, 16)?.with_stats(fleet.stats().clone());

    let enrolled = fleet.enroll_all(&client, ENROLLMENT_TOKEN).await?;
    assert_eq!((enrolled.ok, enrolled.failed), (60, 0));
    let device_ids: HashSet<String> = fleet
        .agents()
        .iter()
        .filter_map(|a| a.device_id().map(String::from))
        .collect();
    assert_eq!(device_ids.len(), 60);

    for round in 0..5 {
        let r = fleet.checkin_round(&client).await?;
        assert_eq!((r.ok, r.failed), (60, 0), "round {round}: {:?}", r.errors);
    }
    let summary = fleet.summary();
    assert!(summary.retries_429 > 0, "{summary}");
    assert!(
        summary.installs_ok > 0 && summary.installs_failed > 0,
        "{summary}"
    );
    assert!(summary.reboots_completed > 0, "{summary}");

    let s = state.lock().unwrap_or_else(|e| e.into_inner());
    for agent in fleet.agents() {
        let device = &s.devices[agent.device_id().expect("enrolled")];
        let last = device.checkins.last().expect("checked in");
        let sent: Vec<&str> = agent
            .last_sent_updates()
            .iter()
            .map(|u| u.update_id.as_str())
            .collect();
        assert_eq!(last.available, sent, "{}", agent.hostname());
        for pair in device.checkins.windows(2) {
            for installed in &pair[1].installed_results {
                assert!(
                    !pair[1].available.contains(installed),
                    "{installed} still available"
                );
                assert!(
                    !pair[0].excluded_after.contains(installed),
                    "{installed} was excluded"
                );
            }
            if let Some((id, _)) = &pair[1].reboot_result {
                assert!(device.reboots_issued.contains(id), "unknown schedule {id}");
            }
            for failed in &pair[1].failed_results {
                assert!(
                    !pair[0].excluded_after.contains(failed),
                    "{failed} was excluded"
                );
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reenrollment_keeps_device_ids_and_rotates_tokens() -> anyhow::Result<()> {
    let (url, _state) = mock_relay::start().await?;
    let profiles = load_profiles(&default_data_dir())?;
    let mut fleet = Fleet::new(&profiles, 12, 3)?;
    let client = RelayClient::new(&url, 4)?;
    fleet.enroll_all(&client, ENROLLMENT_TOKEN).await?;
    let before: Vec<(String, String)> = fleet
        .agents()
        .iter()
        .map(|a| {
            (
                a.device_id().unwrap_or_default().to_owned(),
                a.agent_token().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    fleet.enroll_all(&client, ENROLLMENT_TOKEN).await?;
    for (agent, (device, token)) in fleet.agents().iter().zip(&before) {
        assert_eq!(agent.device_id(), Some(device.as_str()));
        assert_ne!(agent.agent_token(), Some(token.as_str()));
    }
    let bad = fleet.enroll_all(&client, "wrong").await?;
    assert_eq!(bad.errors.get("401"), Some(&12));
    fleet.agents_mut()[0].set_agent_token(Some("ppa_forged".into()));
    let stats = fleet.stats().clone();
    let behaviour = fleet.behaviour().clone();
    let err = fleet.agents_mut()[0]
        .checkin(&client, &behaviour, &stats)
        .await;
    assert!(
        matches!(err, Err(CallError::Status { status: 401, .. })),
        "{err:?}"
    );
    Ok(())
}

/// 10,000 agents, two check-in rounds. Heavy (about 2 GB of JSON per round):
/// `cargo test -p relay-tests --lib ten_thousand -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "heavy: 10,000 agents"]
async fn ten_thousand_agents() -> anyhow::Result<()> {
    let (url, _state) = mock_relay::start().await?;
    let profiles = load_profiles(&default_data_dir())?;
    let started = Instant::now();
    let mut fleet = Fleet::new(&profiles, 10_000, 1)?;
    println!("fleet built in {:.2?}", started.elapsed());
    let client = RelayClient::new(&url, 256)?.with_stats(fleet.stats().clone());
    let r = fleet.enroll_all(&client, ENROLLMENT_TOKEN).await?;
    assert_eq!(r.ok, 10_000);
    println!("enrolled in {:.2?}", started.elapsed());
    for _ in 0..2 {
        let r = fleet.checkin_round(&client).await?;
        assert_eq!(r.ok, 10_000, "{:?}", r.errors);
        println!("round done at {:.2?}", started.elapsed());
    }
    println!("{}", fleet.summary());
    Ok(())
}
