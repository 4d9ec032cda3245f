//! Container events (GetContainerEvents, kubelet's evented PLEG) and the watcher that notices exits nobody
//! asked about. Every state change goes through `Containers::save`, which publishes the matching event.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use super::record::{ContainerRecord, ContainerState};
use super::service::Containers;

/// How many events a subscriber may fall behind before it loses some (it is told how many).
pub const EVENT_BUFFER: usize = 4096;

/// How often running containers are checked for an exit when nothing else asks.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Created,
    Started,
    Stopped,
    Deleted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEvent {
    pub container_id: String,
    pub pod_id: String,
    pub kind: EventKind,
    /// Nanoseconds since the epoch.
    pub at: i64,
}

pub fn channel() -> broadcast::Sender<ContainerEvent> {
    broadcast::channel(EVENT_BUFFER).0
}

/// The event a change from `before` (None: a new record) to `after` means, if any.
pub fn transition(before: Option<ContainerState>, after: ContainerState) -> Option<EventKind> {
    use ContainerState::*;
    match (before, after) {
        (Some(a), b) if a == b => None,
        (_, Created) => Some(EventKind::Created),
        (_, Running) => Some(EventKind::Started),
        (Some(Created | Running), Exited) => Some(EventKind::Stopped),
        // A create that failed before the container existed is no event.
        (None | Some(Creating), Exited) | (_, Creating) => None,
        (Some(Exited), _) => None,
    }
}

pub fn event(rec: &ContainerRecord, kind: EventKind) -> ContainerEvent {
    ContainerEvent {
        container_id: rec.id.clone(),
        pod_id: rec.pod_id.clone(),
        kind,
        at: crate::pod::now_nanos(),
    }
}

impl Containers {
    /// A new subscriber: it gets every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ContainerEvent> {
        self.events().subscribe()
    }

    /// Runs until the runtime goes: refreshes created and running containers, so an exit becomes a Stopped event
    /// within [`WATCH_INTERVAL`] even when nobody calls ContainerStatus.
    pub async fn watch_exits(self: Arc<Self>) {
        loop {
            tokio::time::sleep(WATCH_INTERVAL).await;
            self.refresh_live().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ContainerState::*;

    #[test]
    fn transitions_that_are_events() {
        assert_eq!(
            transition(Some(Creating), Created),
            Some(EventKind::Created)
        );
        assert_eq!(transition(Some(Created), Running), Some(EventKind::Started));
        assert_eq!(transition(Some(Running), Exited), Some(EventKind::Stopped));
        assert_eq!(transition(Some(Created), Exited), Some(EventKind::Stopped));
        assert_eq!(transition(Some(Running), Running), None);
        assert_eq!(transition(None, Creating), None);
        assert_eq!(transition(Some(Creating), Exited), None);
        assert_eq!(transition(Some(Exited), Exited), None);
    }
}
