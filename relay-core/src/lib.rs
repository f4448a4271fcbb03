//! PatchPilot relay core: the store, the agent protocol, the REST API and
//! the domain engines of the on-site appliance, with no knowledge of how
//! the process is started (that is the `appliance` crate's job).

pub mod accounts;
pub mod agents;
pub mod api;
pub mod audit;
pub mod auth;
pub mod catalog;
pub mod clock;
pub mod compliance;
pub mod config;
pub mod control;
pub mod courier;
pub mod devices;
pub mod discovery;
pub mod error;
pub mod events;
pub mod exclusions;
pub mod ids;
pub mod inventory;
pub mod limits;
pub mod presence;
pub mod reboots;
pub mod relay;
pub mod server;
pub mod store;
pub mod tasks;
pub mod tls;
pub mod vulns;
pub mod webhooks;

pub use config::RelayConfig;
pub use relay::{Lifecycle, Relay};

#[allow(dead_code)]
fn _send_check(r: std::sync::Arc<Relay>, req: agents::EnrollRequest) {
    fn is_send<T: Send>(_: T) {}
    is_send(r.enroll(req));
    is_send(r.take_snapshot());
    is_send(r.cancel_reboot(ids::DeviceId::generate()));
    is_send(r.import_kev(Default::default()));
    is_send(r.delete_exclusion(ids::ExclusionId::generate()));
}
