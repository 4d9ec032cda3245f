//! Container records as CRI messages (ContainerStatus, Container) and ListContainers' filter as a domain filter.

use std::collections::HashMap;

use crius_proto::v1;

use crate::container::config::ContainerConfig;
use crate::container::events::{ContainerEvent, EventKind};
use crate::container::record::{ContainerRecord, ContainerState};
use crate::container::service::ContainerFilter;

fn state(s: ContainerState) -> v1::ContainerState {
    match s {
        ContainerState::Creating | ContainerState::Created => v1::ContainerState::ContainerCreated,
        ContainerState::Running => v1::ContainerState::ContainerRunning,
        ContainerState::Exited => v1::ContainerState::ContainerExited,
    }
}

fn map(m: &std::collections::BTreeMap<String, String>) -> HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn image_spec(c: &ContainerConfig) -> v1::ImageSpec {
    v1::ImageSpec {
        image: c.image.image.clone(),
        annotations: map(&c.image.annotations),
        user_specified_image: c.image.user_specified_image.clone(),
        runtime_handler: String::new(),
    }
}

fn metadata(c: &ContainerConfig) -> v1::ContainerMetadata {
    v1::ContainerMetadata {
        name: c.name.clone(),
        attempt: c.attempt,
    }
}

pub fn container(r: &ContainerRecord) -> v1::Container {
    v1::Container {
        id: r.id.clone(),
        pod_sandbox_id: r.pod_id.clone(),
        metadata: Some(metadata(&r.config)),
        image: Some(image_spec(&r.config)),
        image_ref: r.image_ref.clone(),
        state: state(r.state) as i32,
        created_at: r.created_at,
        labels: map(&r.config.labels),
        annotations: map(&r.config.annotations),
        image_id: r.image_id.clone(),
    }
}

pub fn status(r: &ContainerRecord) -> v1::ContainerStatus {
    let exited = r.state == ContainerState::Exited;
    v1::ContainerStatus {
        id: r.id.clone(),
        metadata: Some(metadata(&r.config)),
        state: state(r.state) as i32,
        created_at: r.created_at,
        started_at: r.started_at,
        finished_at: if exited { r.finished_at } else { 0 },
        exit_code: if exited { r.exit_code } else { 0 },
        image: Some(image_spec(&r.config)),
        image_ref: r.image_ref.clone(),
        reason: if exited {
            r.reason.clone()
        } else {
            String::new()
        },
        message: r.message.clone(),
        labels: map(&r.config.labels),
        annotations: map(&r.config.annotations),
        mounts: super::convert_container::mounts_out(&r.config.mounts),
        log_path: r
            .log_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        resources: r
            .config
            .resources
            .as_ref()
            .map(|res| v1::ContainerResources {
                linux: Some(super::convert_container::resources_out(res)),
                windows: None,
            }),
        image_id: r.image_id.clone(),
        user: r.user.as_ref().map(|u| v1::ContainerUser {
            linux: Some(v1::LinuxContainerUser {
                uid: i64::from(u.uid),
                gid: i64::from(u.gid),
                supplemental_groups: u
                    .supplemental_groups
                    .iter()
                    .map(|g| i64::from(*g))
                    .collect(),
            }),
        }),
    }
}

/// Verbose info as containerd gives it: `info` = JSON with the pid, the sandbox and the OCI spec.
pub fn info(r: &ContainerRecord) -> HashMap<String, String> {
    let spec: serde_json::Value = std::fs::read(r.bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null);
    let info = serde_json::json!({
        "sandboxID": r.pod_id,
        "pid": r.pid,
        "bundle": r.bundle,
        "cgroup": r.cgroup_abs,
        // What the kernel applied: without CAP_SYS_RESOURCE a value below the monitor's is kept at the monitor's.
        "oomScoreAdj": (r.state == ContainerState::Running)
            .then(|| std::fs::read_to_string(format!("/proc/{}/oom_score_adj", r.pid)).ok())
            .flatten()
            .and_then(|v| v.trim().parse::<i64>().ok()),
        "runtimeSpec": spec,
    });
    HashMap::from([("info".to_string(), info.to_string())])
}

/// One GetContainerEvents message: the event with the pod's status and its containers' statuses as they are now.
pub fn event(rt: &crate::runtime::Runtime, ev: &ContainerEvent) -> v1::ContainerEventResponse {
    let kind = match ev.kind {
        EventKind::Created => v1::ContainerEventType::ContainerCreatedEvent,
        EventKind::Started => v1::ContainerEventType::ContainerStartedEvent,
        EventKind::Stopped => v1::ContainerEventType::ContainerStoppedEvent,
        EventKind::Deleted => v1::ContainerEventType::ContainerDeletedEvent,
    };
    v1::ContainerEventResponse {
        container_id: ev.container_id.clone(),
        container_event_type: kind as i32,
        created_at: ev.at,
        pod_sandbox_status: rt
            .pods
            .get(&ev.pod_id)
            .ok()
            .map(|p| super::convert::pod_status(&p)),
        containers_statuses: rt
            .containers
            .snapshot_of_pod(&ev.pod_id)
            .iter()
            .map(status)
            .collect(),
    }
}

pub fn filter(f: Option<&v1::ContainerFilter>) -> ContainerFilter {
    let Some(f) = f else {
        return ContainerFilter::default();
    };
    ContainerFilter {
        id: (!f.id.is_empty()).then(|| f.id.clone()),
        pod_id: (!f.pod_sandbox_id.is_empty()).then(|| f.pod_sandbox_id.clone()),
        state: f
            .state
            .as_ref()
            .map(|s| match v1::ContainerState::try_from(s.state) {
                Ok(v1::ContainerState::ContainerRunning) => ContainerState::Running,
                Ok(v1::ContainerState::ContainerExited) => ContainerState::Exited,
                // UNKNOWN matches nothing crius reports; CREATED is created.
                Ok(v1::ContainerState::ContainerUnknown) => ContainerState::Creating,
                _ => ContainerState::Created,
            }),
        labels: f
            .label_selector
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}
