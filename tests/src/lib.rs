//! Test support for the PatchPilot relay: a fleet simulator built from real
//! data (Windows `systeminfo` dumps + the Microsoft security update catalog,
//! and this machine's dpkg/apt state), driving the agent protocol over HTTP.
//!
//! Typical use from an integration test:
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use relay_tests::{profiles, Fleet, RelayClient};
//! let profiles = profiles::load_profiles(&profiles::default_data_dir())?;
//! let mut fleet = Fleet::new(&profiles, 100, 42)?;
//! let client = RelayClient::new("http://127.0.0.1:8080", 32)?;
//! let enrolled = fleet.enroll_all(&client, "enrollment-token").await?;
//! assert_eq!(enrolled.failed, 0);
//! let round = fleet.checkin_round(&client).await?;
//! for agent in fleet.agents() {
//!     let _ = (agent.device_id(), agent.hostname(), agent.last_sent_updates());
//! }
//! # let _ = round; Ok(()) }
//! ```

pub mod agent;
pub mod catalog;
pub mod client;
pub mod fleet;
pub mod harness;
pub mod linux;
pub mod mdns;
pub mod netns;
pub mod pinning;
pub mod products;
pub mod profiles;
pub mod protocol;
pub mod pytools;
pub mod receiver;
pub mod sim;
pub mod stats;
pub mod systeminfo;
pub mod timefmt;

pub use agent::{Agent, Behaviour};
pub use client::{CallError, RelayClient, RetryPolicy};
pub use fleet::{Fleet, RoundReport};
pub use profiles::{load_profiles, Profile};
pub use stats::Summary;

#[cfg(test)]
mod e2e_tests;
#[cfg(test)]
mod mock_relay;
