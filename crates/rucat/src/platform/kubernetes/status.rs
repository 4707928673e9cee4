//! What a driver pod's status means for its engine.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use crate::platform::ResourceState;

/// Waiting reasons after which the driver container will not start without someone changing
/// something (the image, a secret, the pod spec): the engine has failed.
const FATAL_WAITING: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// Maps a driver pod to the platform's view: `Running` only when the pod is ready (its
/// readiness probe reached the Spark Connect port).
pub fn pod_state(pod: &Pod, endpoint: &str) -> ResourceState {
    let name = pod.metadata.name.as_deref().unwrap_or("?");
    if pod.metadata.deletion_timestamp.is_some() {
        return ResourceState::Failed(format!("driver pod {name} is being deleted"));
    }
    let Some(status) = &pod.status else {
        return ResourceState::Starting;
    };
    let containers = status.container_statuses.as_deref().unwrap_or_default();
    match status.phase.as_deref() {
        Some("Running") if is_ready(pod) => ResourceState::Running {
            endpoint: endpoint.to_owned(),
        },
        Some("Pending") | Some("Running") => match fatal_waiting(containers) {
            Some(why) => ResourceState::Failed(format!("driver pod {name} cannot start: {why}")),
            None => ResourceState::Starting,
        },
        Some("Succeeded") => ResourceState::Failed(format!(
            "the driver exited{}",
            termination(containers)
                .map(|t| format!(": {t}"))
                .unwrap_or_default()
        )),
        Some("Failed") => {
            let mut why: Vec<String> = [status.reason.as_deref(), status.message.as_deref()]
                .into_iter()
                .flatten()
                .map(str::to_owned)
                .collect();
            why.extend(termination(containers));
            if why.is_empty() {
                why.push("no reason given".to_owned());
            }
            ResourceState::Failed(format!("driver pod {name} failed: {}", why.join(": ")))
        }
        // `Unknown` (the node stopped reporting) or a phase not yet set: not serving, not gone.
        _ => ResourceState::Starting,
    }
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

fn fatal_waiting(containers: &[ContainerStatus]) -> Option<String> {
    containers.iter().find_map(|c| {
        let waiting = c.state.as_ref()?.waiting.as_ref()?;
        let reason = waiting.reason.as_deref()?;
        FATAL_WAITING
            .contains(&reason)
            .then(|| match &waiting.message {
                Some(message) => format!("{reason}: {message}"),
                None => reason.to_owned(),
            })
    })
}

/// How the driver container ended: "OOMKilled, exit code 137".
fn termination(containers: &[ContainerStatus]) -> Option<String> {
    containers.iter().find_map(|c| {
        let done = c.state.as_ref()?.terminated.as_ref()?;
        let mut text = done.reason.clone().unwrap_or_else(|| "terminated".into());
        text.push_str(&format!(", exit code {}", done.exit_code));
        if let Some(message) = done.message.as_deref().filter(|m| !m.is_empty()) {
            text.push_str(&format!(" ({message})"));
        }
        Some(text)
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const ENDPOINT: &str = "sc://rucat-x.ns.svc.cluster.local:15002";

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "rucat-x"},
            "status": status,
        }))
        .expect("a pod")
    }

    fn failed(state: ResourceState) -> String {
        match state {
            ResourceState::Failed(message) => message,
            other => panic!("expected Failed, got {other:?}"),
        }
    }

    #[test]
    fn pending_and_not_ready_are_starting() {
        assert_eq!(
            pod_state(&pod(json!({})), ENDPOINT),
            ResourceState::Starting
        );
        assert_eq!(
            pod_state(&pod(json!({"phase": "Pending"})), ENDPOINT),
            ResourceState::Starting
        );
        let unschedulable = json!({"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]});
        assert_eq!(
            pod_state(&pod(unschedulable), ENDPOINT),
            ResourceState::Starting
        );
        let pulling = json!({"phase": "Pending", "containerStatuses": [{"name": "spark-connect",
            "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ContainerCreating"}}}]});
        assert_eq!(pod_state(&pod(pulling), ENDPOINT), ResourceState::Starting);
        let not_ready = json!({"phase": "Running", "conditions": [
            {"type": "Ready", "status": "False"}]});
        assert_eq!(
            pod_state(&pod(not_ready), ENDPOINT),
            ResourceState::Starting
        );
        assert_eq!(
            pod_state(&pod(json!({"phase": "Unknown"})), ENDPOINT),
            ResourceState::Starting
        );
    }

    #[test]
    fn running_and_ready_serves() {
        let ready = json!({"phase": "Running", "conditions": [
            {"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}]});
        assert_eq!(
            pod_state(&pod(ready), ENDPOINT),
            ResourceState::Running {
                endpoint: ENDPOINT.to_owned()
            }
        );
    }

    #[test]
    fn image_errors_fail_with_the_reason() {
        for reason in ["ErrImagePull", "ImagePullBackOff", "InvalidImageName"] {
            let status = json!({"phase": "Pending", "containerStatuses": [{"name": "spark-connect",
                "image": "nope", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": reason, "message": "pull access denied for nope"}}}]});
            let message = failed(pod_state(&pod(status), ENDPOINT));
            assert!(message.contains(reason), "{message}");
            assert!(message.contains("pull access denied"), "{message}");
        }
    }

    #[test]
    fn ended_pods_fail_with_what_ended_them() {
        let oom = json!({"phase": "Failed", "containerStatuses": [{"name": "spark-connect",
            "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}]});
        let message = failed(pod_state(&pod(oom), ENDPOINT));
        assert!(message.contains("OOMKilled, exit code 137"), "{message}");

        let evicted = json!({"phase": "Failed", "reason": "Evicted",
            "message": "The node was low on resource: memory."});
        let message = failed(pod_state(&pod(evicted), ENDPOINT));
        assert!(
            message.contains("Evicted: The node was low on resource"),
            "{message}"
        );

        let exited = json!({"phase": "Succeeded", "containerStatuses": [{"name": "spark-connect",
            "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"reason": "Completed", "exitCode": 0}}}]});
        let message = failed(pod_state(&pod(exited), ENDPOINT));
        assert!(
            message.contains("driver exited: Completed, exit code 0"),
            "{message}"
        );

        assert!(
            failed(pod_state(&pod(json!({"phase": "Failed"})), ENDPOINT))
                .contains("no reason given")
        );
    }

    #[test]
    fn a_pod_being_deleted_is_failed() {
        let mut deleting = pod(json!({"phase": "Running", "conditions": [
            {"type": "Ready", "status": "True"}]}));
        deleting.metadata.deletion_timestamp =
            serde_json::from_value(json!("2026-01-01T00:00:00Z")).expect("a time");
        assert!(failed(pod_state(&deleting, ENDPOINT)).contains("being deleted"));
    }
}
