//! A fleet of simulated agents cloned from the profiles.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use tokio::task::JoinSet;

use crate::agent::{Agent, Behaviour, SharedProfile};
use crate::client::{CallError, RelayClient};
use crate::profiles::Profile;
use crate::stats::{Stats, Summary};

/// Outcome of one enrollment or check-in round.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoundReport {
    pub ok: usize,
    pub failed: usize,
    /// Failures by [`CallError::label`] (status code or error kind).
    pub errors: BTreeMap<String, usize>,
}

impl RoundReport {
    fn add(&mut self, result: &Result<(), CallError>) {
        match result {
            Ok(()) => self.ok += 1,
            Err(e) => {
                self.failed += 1;
                *self.errors.entry(e.label()).or_default() += 1;
            }
        }
    }
}

/// N agents cloned round-robin from the profiles; they share each profile
/// (and its update list) through an `Arc`.
pub struct Fleet {
    agents: Vec<Agent>,
    behaviour: Behaviour,
    stats: Arc<Stats>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("agents", &self.agents.len())
            .field("behaviour", &self.behaviour)
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// `n` agents from `profiles` (agent `i` clones profile `i % len`),
    /// deterministic for `seed`, with the default [`Behaviour`].
    pub fn new(profiles: &[Profile], n: usize, seed: u64) -> anyhow::Result<Fleet> {
        Fleet::with_behaviour(profiles, n, seed, Behaviour::default())
    }

    /// Like [`Fleet::new`] with explicit behaviour knobs.
    pub fn with_behaviour(
        profiles: &[Profile],
        n: usize,
        seed: u64,
        behaviour: Behaviour,
    ) -> anyhow::Result<Fleet> {
        if profiles.is_empty() {
            bail!("no profiles to clone");
        }
        let shared: Vec<SharedProfile> = profiles.iter().cloned().map(SharedProfile::new).collect();
        let agents = (0..n)
            .map(|i| Agent::new(i, &shared[i % shared.len()], seed, &behaviour))
            .collect();
        Ok(Fleet {
            agents,
            behaviour,
            stats: Arc::new(Stats::default()),
        })
    }

    pub fn agents(&self) -> &[Agent] {
        &self.agents
    }

    pub fn agents_mut(&mut self) -> &mut [Agent] {
        &mut self.agents
    }

    pub fn behaviour(&self) -> &Behaviour {
        &self.behaviour
    }

    /// The counters all rounds update.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Counters so far.
    pub fn summary(&self) -> Summary {
        self.stats.summary(self.agents.len())
    }

    /// The agent with this relay device id.
    pub fn agent_by_device_id(&self, device_id: &str) -> Option<&Agent> {
        self.agents
            .iter()
            .find(|a| a.device_id() == Some(device_id))
    }

    /// Enrolls every agent (agents already enrolled re-enroll: same machine
    /// id, so same device id and a new token).
    pub async fn enroll_all(
        &mut self,
        client: &RelayClient,
        enrollment_token: &str,
    ) -> anyhow::Result<RoundReport> {
        let token: Arc<str> = Arc::from(enrollment_token);
        self.round(client, move |mut agent, client, _behaviour, stats| {
            let token = Arc::clone(&token);
            async move {
                let result = agent.enroll(&client, &token, &stats).await;
                (agent, result)
            }
        })
        .await
    }

    /// One check-in of every agent, concurrently (bounded by the client).
    pub async fn checkin_round(&mut self, client: &RelayClient) -> anyhow::Result<RoundReport> {
        self.round(client, |mut agent, client, behaviour, stats| async move {
            let result = agent.checkin(&client, &behaviour, &stats).await;
            (agent, result)
        })
        .await
    }

    /// Runs `step` for every agent on its own task; agents come back in order.
    async fn round<F, Fut>(&mut self, client: &RelayClient, step: F) -> anyhow::Result<RoundReport>
    where
        F: Fn(Agent, RelayClient, Behaviour, Arc<Stats>) -> Fut,
        Fut: Future<Output = (Agent, Result<(), CallError>)> + Send + 'static,
    {
        let mut tasks = JoinSet::new();
        for agent in std::mem::take(&mut self.agents) {
            tasks.spawn(step(
                agent,
                client.clone(),
                self.behaviour.clone(),
                Arc::clone(&self.stats),
            ));
        }
        let mut report = RoundReport::default();
        let mut agents = Vec::with_capacity(tasks.len());
        while let Some(joined) = tasks.join_next().await {
            let (agent, result) = joined.context("an agent task panicked")?;
            report.add(&result);
            agents.push(agent);
        }
        agents.sort_by_key(Agent::index);
        self.agents = agents;
        Ok(report)
    }

    /// Takes the agents out (e.g. to run them on long-lived tasks).
    pub fn take_agents(&mut self) -> Vec<Agent> {
        std::mem::take(&mut self.agents)
    }

    /// Puts agents back (sorted by index).
    pub fn restore_agents(&mut self, mut agents: Vec<Agent>) {
        agents.sort_by_key(Agent::index);
        self.agents = agents;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::OsFamily;
    use std::collections::HashSet;

    fn profile(host: &str, n_updates: usize) -> Profile {
        let update = |i: usize| crate::protocol::Update {
            update_id: format!("KB{i}"),
            kb: Some(format!("KB{i}")),
            package: None,
            title: String::new(),
            severity: crate::protocol::Severity::Low,
            cves: vec![],
            released_at: None,
        };
        Profile {
            source: host.into(),
            host_name: host.into(),
            os_family: OsFamily::Windows,
            os_name: "Windows 10 Pro".into(),
            os_version: "10.0.19045".into(),
            os_build: Some("19045".into()),
            arch: "x64".into(),
            product: None,
            installed_kbs: vec![],
            installed_packages: vec![],
            updates: (0..n_updates).map(update).collect(),
            supersedes: vec![vec![]; n_updates],
        }
    }

    #[test]
    fn scales_and_shares_profiles() -> anyhow::Result<()> {
        let profiles = [profile("A", 50), profile("B", 3)];
        let fleet = Fleet::new(&profiles, 10_000, 42)?;
        let agents = fleet.agents();
        assert_eq!(agents.len(), 10_000);
        assert_eq!(agents[1].profile().host_name, "B");
        assert!(Arc::ptr_eq(agents[0].profile(), agents[9_998].profile()));
        let hosts: HashSet<&str> = agents.iter().map(Agent::hostname).collect();
        let ids: HashSet<&str> = agents.iter().map(Agent::machine_id).collect();
        assert_eq!((hosts.len(), ids.len()), (10_000, 10_000));
        let again = Fleet::new(&profiles, 10_000, 42)?;
        assert_eq!(again.agents()[777].hostname(), agents[777].hostname());
        Ok(())
    }

    #[test]
    fn needs_profiles() {
        assert!(Fleet::new(&[], 1, 0).is_err());
    }

    #[tokio::test]
    async fn unreachable_relay_is_reported_per_agent() -> anyhow::Result<()> {
        // Port 1 on loopback: nothing listens there, so every call fails fast.
        let client = RelayClient::new("http://127.0.0.1:1", 4)?;
        let mut fleet = Fleet::new(&[profile("A", 2)], 5, 1)?;
        let enroll = fleet.enroll_all(&client, "tok").await?;
        assert_eq!((enroll.ok, enroll.failed), (0, 5));
        assert_eq!(enroll.errors.get("transport"), Some(&5));
        let checkin = fleet.checkin_round(&client).await?;
        assert_eq!(checkin.errors.get("not-enrolled"), Some(&5));
        assert_eq!(fleet.agents().len(), 5);
        assert_eq!(fleet.summary().enroll_errors, 5);
        Ok(())
    }
}
