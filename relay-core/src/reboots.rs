//! Reboot schedules: `scheduled → dispatched → completed | failed`, or
//! `cancelled`, or `missed` when the device was not reached within the
//! dispatch grace after `at` (a late reboot is never sent).

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::ids::{DeviceId, ScheduleId, UserId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RebootStatus {
    Scheduled,
    Dispatched,
    Completed,
    Failed,
    Cancelled,
    Missed,
}

impl RebootStatus {
    /// Still waiting to happen: it blocks nothing but is the device's one
    /// current schedule.
    pub fn is_open(self) -> bool {
        matches!(self, RebootStatus::Scheduled | RebootStatus::Dispatched)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RebootSchedule {
    pub schedule_id: ScheduleId,
    pub device_id: DeviceId,
    pub at: Timestamp,
    pub message: String,
    pub force: bool,
    pub status: RebootStatus,
    pub created_at: Timestamp,
    pub created_by: Option<UserId>,
    pub dispatched_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub error: Option<String>,
}

/// What a check-in at `now` should do with the device's open schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatch {
    /// Not yet due: say nothing.
    Wait,
    /// Due now (or already handed over and not yet reported): send it.
    Send,
    /// Its grace has passed without a hand-over: mark it missed.
    Missed,
}

impl RebootSchedule {
    pub fn dispatch_at(&self, now: Timestamp, grace_s: i64) -> Dispatch {
        match self.status {
            RebootStatus::Dispatched => Dispatch::Send,
            RebootStatus::Scheduled if now < self.at => Dispatch::Wait,
            RebootStatus::Scheduled if now.seconds_since(self.at) > grace_s => Dispatch::Missed,
            RebootStatus::Scheduled => Dispatch::Send,
            _ => Dispatch::Wait,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(at: i64) -> RebootSchedule {
        RebootSchedule {
            schedule_id: ScheduleId::generate(),
            device_id: DeviceId::generate(),
            at: Timestamp(at),
            message: String::new(),
            force: false,
            status: RebootStatus::Scheduled,
            created_at: Timestamp(0),
            created_by: None,
            dispatched_at: None,
            finished_at: None,
            error: None,
        }
    }

    #[test]
    fn a_reboot_is_sent_at_or_after_its_time_and_never_late() {
        let s = schedule(1000);
        assert_eq!(s.dispatch_at(Timestamp(999), 7200), Dispatch::Wait);
        assert_eq!(s.dispatch_at(Timestamp(1000), 7200), Dispatch::Send);
        assert_eq!(s.dispatch_at(Timestamp(8200), 7200), Dispatch::Send);
        assert_eq!(s.dispatch_at(Timestamp(8201), 7200), Dispatch::Missed);
    }

    #[test]
    fn a_dispatched_reboot_is_repeated_until_reported() {
        let mut s = schedule(1000);
        s.status = RebootStatus::Dispatched;
        assert_eq!(s.dispatch_at(Timestamp(100_000), 7200), Dispatch::Send);
        s.status = RebootStatus::Completed;
        assert_eq!(s.dispatch_at(Timestamp(100_000), 7200), Dispatch::Wait);
    }
}

/// `POST /api/reboot-management/:device_id/schedule` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct NewSchedule {
    #[schema(value_type = Timestamp)]
    pub at: String,
    #[serde(default)]
    #[schema(max_length = 500)]
    pub message: String,
    #[serde(default)]
    pub force: bool,
}

mod ops {
    use super::*;
    use crate::error::{check_text, Checks, RelayError, RelayResult};
    use crate::events::EventType;
    use crate::relay::Relay;
    use crate::store::{Batch, Table};

    impl Relay {
        /// Schedules a reboot, replacing the device's pending one.
        ///
        /// # Errors
        /// 404 for an unknown device, 422 for a time in the past or too far
        /// ahead.
        pub async fn schedule_reboot(
            &self,
            device_id: DeviceId,
            req: NewSchedule,
            by: UserId,
        ) -> RelayResult<RebootSchedule> {
            let now = self.clock.now();
            let schedule = self.check_reboot(device_id, req, by, now)?;
            {
                let mut writer = self.store.writer();
                let mut batch = Batch::new();
                self.stage_reboot(&writer, &mut batch, &schedule, now)?;
                writer.apply(batch)?;
                self.fleet
                    .set_scheduled(device_id, Some((schedule.schedule_id, schedule.at)));
            }
            self.store.durable().await?;
            Ok(schedule)
        }

        /// Validates a schedule request into the record it would create.
        ///
        /// # Errors
        /// 404 for an unknown device, 422 for a time in the past or too far
        /// ahead.
        pub fn check_reboot(
            &self,
            device_id: DeviceId,
            req: NewSchedule,
            by: UserId,
            now: Timestamp,
        ) -> RelayResult<RebootSchedule> {
            let mut checks = Checks::new();
            let max_ahead = self.config.reboot.max_ahead_days;
            let at = match Timestamp::parse(&req.at) {
                Ok(at) if at <= now => {
                    checks.fail("at", "must be in the future");
                    at
                }
                Ok(at) if at.seconds_since(now) > max_ahead * Timestamp::SECONDS_PER_DAY => {
                    checks.fail("at", format!("must be at most {max_ahead} days ahead"));
                    at
                }
                Ok(at) => at,
                Err(err) => {
                    checks.fail("at", err.to_string());
                    now
                }
            };
            check_text(&mut checks, "message", &req.message, 0, 500);
            if self.fleet.hostname_of(device_id).is_none() {
                return Err(RelayError::NotFound("device"));
            }
            checks.finish()?;
            Ok(RebootSchedule {
                schedule_id: ScheduleId::generate(),
                device_id,
                at,
                message: req.message,
                force: req.force,
                status: RebootStatus::Scheduled,
                created_at: now,
                created_by: Some(by),
                dispatched_at: None,
                finished_at: None,
                error: None,
            })
        }

        /// Adds the writes and the event of a new schedule to `batch`,
        /// closing the device's open one. The caller updates the fleet
        /// index once the batch is applied.
        ///
        /// # Errors
        /// A storage failure.
        pub fn stage_reboot(
            &self,
            writer: &crate::store::Writer<'_>,
            batch: &mut Batch,
            schedule: &RebootSchedule,
            now: Timestamp,
        ) -> RelayResult<()> {
            let device_id = schedule.device_id;
            self.stage_close_open(writer, batch, device_id, now)?;
            batch.put(
                Table::Reboots,
                schedule.schedule_id.to_bytes().to_vec(),
                schedule,
            );
            batch.put(
                Table::DeviceReboots,
                device_id.to_bytes().to_vec(),
                &schedule.schedule_id,
            );
            let data = serde_json::json!({
                "device_id": device_id,
                "hostname": self.fleet.hostname_of(device_id),
                "schedule_id": schedule.schedule_id,
                "at": schedule.at,
                "force": schedule.force,
            });
            batch.event(EventType::RebootScheduled, now, data);
            Ok(())
        }

        /// Marks the device's open schedule cancelled, if there is one.
        pub fn stage_close_open(
            &self,
            writer: &crate::store::Writer<'_>,
            batch: &mut Batch,
            device_id: DeviceId,
            now: Timestamp,
        ) -> RelayResult<Option<RebootSchedule>> {
            let store = writer.store();
            let Some(open) =
                store.get::<ScheduleId>(Table::DeviceReboots, &device_id.to_bytes())?
            else {
                return Ok(None);
            };
            let Some(mut schedule) =
                store.get::<RebootSchedule>(Table::Reboots, &open.to_bytes())?
            else {
                return Ok(None);
            };
            schedule.status = RebootStatus::Cancelled;
            schedule.finished_at = Some(now);
            batch.put(Table::Reboots, open.to_bytes().to_vec(), &schedule);
            batch.delete(Table::DeviceReboots, device_id.to_bytes().to_vec());
            Ok(Some(schedule))
        }

        /// Cancels the device's pending reboot.
        ///
        /// # Errors
        /// 404 when the device is unknown or has no pending reboot.
        pub async fn cancel_reboot(&self, device_id: DeviceId) -> RelayResult<()> {
            let now = self.clock.now();
            {
                let mut writer = self.store.writer();
                let mut batch = Batch::new();
                if self
                    .stage_close_open(&writer, &mut batch, device_id, now)?
                    .is_none()
                {
                    return Err(RelayError::NotFound("pending reboot"));
                }
                writer.apply(batch)?;
                self.fleet.set_scheduled(device_id, None);
            }
            self.store.durable().await?;
            Ok(())
        }

        /// The device's open schedule.
        ///
        /// # Errors
        /// A storage failure.
        pub fn open_reboot(&self, device_id: DeviceId) -> RelayResult<Option<RebootSchedule>> {
            let Some(id) = self
                .store
                .get::<ScheduleId>(Table::DeviceReboots, &device_id.to_bytes())?
            else {
                return Ok(None);
            };
            Ok(self.store.get(Table::Reboots, &id.to_bytes())?)
        }

        /// Marks schedules whose dispatch grace has passed as missed.
        ///
        /// # Errors
        /// A storage failure.
        pub fn sweep_missed_reboots(&self) -> RelayResult<usize> {
            let now = self.clock.now();
            let grace = self.config.reboot.dispatch_grace_s;
            let mut writer = self.store.writer();
            let mut batch = Batch::new();
            let mut missed = Vec::new();
            for (_, id) in writer.store().scan::<ScheduleId>(Table::DeviceReboots)? {
                let Some(mut s) = writer
                    .store()
                    .get::<RebootSchedule>(Table::Reboots, &id.to_bytes())?
                else {
                    continue;
                };
                if s.dispatch_at(now, grace) == Dispatch::Missed {
                    s.status = RebootStatus::Missed;
                    s.finished_at = Some(now);
                    batch.put(Table::Reboots, id.to_bytes().to_vec(), &s);
                    batch.delete(Table::DeviceReboots, s.device_id.to_bytes().to_vec());
                    missed.push(s.device_id);
                }
            }
            if !missed.is_empty() {
                writer.apply(batch)?;
                for d in &missed {
                    self.fleet.set_scheduled(*d, None);
                }
                tracing::info!(count = missed.len(), "reboots missed their dispatch window");
            }
            Ok(missed.len())
        }
    }
}
