//! The engine state machine: every state, every transition, in one place.
//!
//! User operations are applied by the server as a compare-and-swap on the store; monitor steps
//! only by a monitor. Anything not listed here is refused.

/// The states an engine goes through. Their names are what the API and the store show; the
/// type is the one the API's clients see (`rucat-client`), so that both read states alike.
pub use rucat_client::{EngineState, UnknownState};

/// What a user can ask of an existing engine (creation has no "from" state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserOp {
    Stop,
    Restart,
    Delete,
}

impl UserOp {
    pub const ALL: [UserOp; 3] = [UserOp::Stop, UserOp::Restart, UserOp::Delete];

    pub fn as_str(self) -> &'static str {
        match self {
            UserOp::Stop => "stop",
            UserOp::Restart => "restart",
            UserOp::Delete => "delete",
        }
    }
}

/// Where a user operation leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserTarget {
    State(EngineState),
    Removed,
}

/// The state a new engine starts in.
pub const CREATED: EngineState = EngineState::WaitToStart;

/// The transition a user operation makes from `state`, or `None` when the state does not allow it.
pub fn user_transition(state: EngineState, op: UserOp) -> Option<UserTarget> {
    use EngineState::*;
    use UserTarget::{Removed, State};
    match (state, op) {
        (WaitToStart, UserOp::Stop) => Some(State(Terminated)),
        (WaitToStart, UserOp::Delete) => Some(Removed),
        (StartInProgress, UserOp::Stop) => Some(State(WaitToTerminate)),
        (Running, UserOp::Stop) => Some(State(WaitToTerminate)),
        (WaitToTerminate, UserOp::Restart) => Some(State(Running)),
        (Terminated, UserOp::Restart) => Some(State(WaitToStart)),
        (Terminated, UserOp::Delete) => Some(Removed),
        (ErrorClean, UserOp::Delete) => Some(Removed),
        _ => None,
    }
}

/// What a monitor observed or did, driving the engine one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MonitorStep {
    /// Claim a waiting engine (`WaitTo*` → `Trigger*`).
    Claim,
    /// The platform resource was created.
    Created,
    /// Creating the platform resource failed.
    CreateFailed,
    /// The resource serves clients.
    Ready,
    /// The resource is in an error state or died.
    Failed,
    /// Deletion of the resource was requested.
    DeleteRequested,
    /// The resource is gone.
    Gone,
    /// A `Trigger*` state outlived the trigger timeout: its monitor died, retry.
    TimedOut,
    /// A Running engine had no Spark Connect call for its idle timeout: stop it, as a user's
    /// STOP would.
    IdleStop,
    /// A delete did not remove the resource by its deadline, even killed: the engine takes its
    /// error path (the orphan scan keeps removing the resource).
    DeleteStuck,
}

impl MonitorStep {
    pub const ALL: [MonitorStep; 10] = [
        MonitorStep::Claim,
        MonitorStep::Created,
        MonitorStep::CreateFailed,
        MonitorStep::Ready,
        MonitorStep::Failed,
        MonitorStep::DeleteRequested,
        MonitorStep::Gone,
        MonitorStep::TimedOut,
        MonitorStep::IdleStop,
        MonitorStep::DeleteStuck,
    ];

    /// Its name in events (a [`Cause::Monitor`](super::Cause::Monitor) step).
    pub fn as_str(self) -> &'static str {
        match self {
            MonitorStep::Claim => "claim",
            MonitorStep::Created => "created",
            MonitorStep::CreateFailed => "create_failed",
            MonitorStep::Ready => "ready",
            MonitorStep::Failed => "failed",
            MonitorStep::DeleteRequested => "delete_requested",
            MonitorStep::Gone => "gone",
            MonitorStep::TimedOut => "timed_out",
            MonitorStep::IdleStop => "idle_stop",
            MonitorStep::DeleteStuck => "delete_stuck",
        }
    }
}

/// The transition a monitor step makes from `state`, or `None` when it does not apply.
pub fn monitor_transition(state: EngineState, step: MonitorStep) -> Option<EngineState> {
    use EngineState::*;
    use MonitorStep::*;
    match (state, step) {
        (WaitToStart, Claim) => Some(TriggerStart),
        (TriggerStart, Created) => Some(StartInProgress),
        (TriggerStart, CreateFailed) => Some(ErrorClean),
        (StartInProgress, Ready) => Some(Running),
        (StartInProgress, Failed) => Some(ErrorWaitToClean),
        (Running, Failed) => Some(ErrorWaitToClean),
        (Running, IdleStop) => Some(WaitToTerminate),
        (TerminateInProgress | ErrorCleanInProgress, DeleteStuck) => Some(ErrorClean),
        (WaitToTerminate, Claim) => Some(TriggerTermination),
        (TriggerTermination, DeleteRequested) => Some(TerminateInProgress),
        (TerminateInProgress, Gone) => Some(Terminated),
        (ErrorWaitToClean, Claim) => Some(ErrorTriggerClean),
        (ErrorTriggerClean, DeleteRequested) => Some(ErrorCleanInProgress),
        (ErrorCleanInProgress, Gone) => Some(ErrorClean),
        (trigger, TimedOut) => trigger.trigger_retry(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::EngineState::*;
    use super::*;

    /// Every allowed user transition, exactly as the design lists them.
    const USER_TABLE: &[(EngineState, UserOp, UserTarget)] = &[
        (WaitToStart, UserOp::Stop, UserTarget::State(Terminated)),
        (WaitToStart, UserOp::Delete, UserTarget::Removed),
        (
            StartInProgress,
            UserOp::Stop,
            UserTarget::State(WaitToTerminate),
        ),
        (Running, UserOp::Stop, UserTarget::State(WaitToTerminate)),
        (WaitToTerminate, UserOp::Restart, UserTarget::State(Running)),
        (Terminated, UserOp::Restart, UserTarget::State(WaitToStart)),
        (Terminated, UserOp::Delete, UserTarget::Removed),
        (ErrorClean, UserOp::Delete, UserTarget::Removed),
    ];

    /// Every allowed monitor transition, exactly as the design lists them.
    const MONITOR_TABLE: &[(EngineState, MonitorStep, EngineState)] = &[
        (WaitToStart, MonitorStep::Claim, TriggerStart),
        (TriggerStart, MonitorStep::Created, StartInProgress),
        (TriggerStart, MonitorStep::CreateFailed, ErrorClean),
        (StartInProgress, MonitorStep::Ready, Running),
        (StartInProgress, MonitorStep::Failed, ErrorWaitToClean),
        (Running, MonitorStep::Failed, ErrorWaitToClean),
        (Running, MonitorStep::IdleStop, WaitToTerminate),
        (TerminateInProgress, MonitorStep::DeleteStuck, ErrorClean),
        (ErrorCleanInProgress, MonitorStep::DeleteStuck, ErrorClean),
        (WaitToTerminate, MonitorStep::Claim, TriggerTermination),
        (
            TriggerTermination,
            MonitorStep::DeleteRequested,
            TerminateInProgress,
        ),
        (TerminateInProgress, MonitorStep::Gone, Terminated),
        (ErrorWaitToClean, MonitorStep::Claim, ErrorTriggerClean),
        (
            ErrorTriggerClean,
            MonitorStep::DeleteRequested,
            ErrorCleanInProgress,
        ),
        (ErrorCleanInProgress, MonitorStep::Gone, ErrorClean),
        (TriggerStart, MonitorStep::TimedOut, WaitToStart),
        (TriggerTermination, MonitorStep::TimedOut, WaitToTerminate),
        (ErrorTriggerClean, MonitorStep::TimedOut, ErrorWaitToClean),
    ];

    #[test]
    fn every_state_and_user_operation_pair() {
        let mut allowed = 0;
        for state in EngineState::ALL {
            for op in UserOp::ALL {
                let expected = USER_TABLE
                    .iter()
                    .find(|(s, o, _)| *s == state && *o == op)
                    .map(|(_, _, target)| *target);
                assert_eq!(user_transition(state, op), expected, "{state} + {op:?}");
                allowed += usize::from(expected.is_some());
            }
        }
        assert_eq!(allowed, USER_TABLE.len());
    }

    #[test]
    fn every_state_and_monitor_step_pair() {
        let mut allowed = 0;
        for state in EngineState::ALL {
            for step in MonitorStep::ALL {
                let expected = MONITOR_TABLE
                    .iter()
                    .find(|(s, o, _)| *s == state && *o == step)
                    .map(|(_, _, target)| *target);
                assert_eq!(
                    monitor_transition(state, step),
                    expected,
                    "{state} + {step:?}"
                );
                allowed += usize::from(expected.is_some());
            }
        }
        assert_eq!(allowed, MONITOR_TABLE.len());
    }

    #[test]
    fn names_round_trip() {
        for state in EngineState::ALL {
            assert_eq!(state.as_str().parse::<EngineState>(), Ok(state));
            assert_eq!(
                serde_json::to_string(&state).ok(),
                Some(format!("\"{state}\""))
            );
        }
        assert_eq!(
            "running".parse::<EngineState>(),
            Err(UnknownState("running".into()))
        );
    }

    #[test]
    fn only_settled_states_have_no_resource_and_no_monitor_work() {
        for state in EngineState::ALL {
            if state.is_settled() {
                assert!(!state.may_have_resource(), "{state}");
            }
        }
        assert!(!WaitToStart.may_have_resource());
        assert!(!WaitToStart.is_settled());
    }
}
