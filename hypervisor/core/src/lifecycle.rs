//! The rules of a guest partition's life and of its VPs' running, apart from
//! the hypervisor's locks and hardware: host-tested.

use hv_abi::hypercall::status;

/// A partition's stage (TLFS: CreatePartition, InitializePartition,
/// FinalizePartition, DeletePartition).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    /// Created: properties may be set.
    Created,
    /// Initialized: memory and VPs may be added.
    Initialized,
    /// Finalized: every VP stopped for good; only deletion remains.
    Finalized,
}

/// What the root asks of a partition that depends on its stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Initialize,
    /// MapGpaPages, CreateVp.
    AddResources,
    Finalize,
}

impl Lifecycle {
    /// The stage after `step`, or INVALID_PARTITION_STATE when this stage
    /// does not allow it. Finalizing twice is allowed (deletion finalizes
    /// first, whatever the root did before).
    pub fn after(self, step: Step) -> Result<Lifecycle, u16> {
        use Lifecycle::*;
        match (self, step) {
            (Created, Step::Initialize) => Ok(Initialized),
            (Initialized, Step::AddResources) => Ok(Initialized),
            (_, Step::Finalize) => Ok(Finalized),
            _ => Err(status::INVALID_PARTITION_STATE),
        }
    }
}

/// What decides whether a guest VP may run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunState {
    /// Suspended by the root (the ExplicitSuspend register).
    pub explicit_suspend: bool,
    /// Suspended at an intercept until the root resumes it.
    pub intercept_suspend: bool,
    /// HLT with interrupts enabled: it waits for an interrupt.
    pub halted: bool,
    pub deleted: bool,
}

impl RunState {
    /// Suspended (by the root or an intercept) or deleted: it may not run,
    /// whatever else holds.
    pub fn stopped(&self) -> bool {
        self.explicit_suspend || self.intercept_suspend || self.deleted
    }

    /// Runnable: not stopped, and not halted unless an interrupt was sent to
    /// it (`interrupt_sent`: it ends the halt).
    pub fn may_run(&self, interrupt_sent: bool) -> bool {
        !self.stopped() && (!self.halted || interrupt_sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_stages_in_order() {
        use Lifecycle::*;
        let bad = Err(status::INVALID_PARTITION_STATE);
        assert_eq!(
            Created.after(Step::AddResources),
            bad,
            "no memory before initialize"
        );
        assert_eq!(Created.after(Step::Initialize), Ok(Initialized));
        assert_eq!(Initialized.after(Step::Initialize), bad, "once only");
        assert_eq!(Initialized.after(Step::AddResources), Ok(Initialized));
        assert_eq!(Initialized.after(Step::Finalize), Ok(Finalized));
        assert_eq!(Finalized.after(Step::AddResources), bad);
        assert_eq!(Finalized.after(Step::Initialize), bad);
        assert_eq!(Finalized.after(Step::Finalize), Ok(Finalized));
        assert_eq!(Created.after(Step::Finalize), Ok(Finalized));
    }

    #[test]
    fn who_may_run() {
        let awake = RunState::default();
        assert!(awake.may_run(false));
        let halted = RunState {
            halted: true,
            ..awake
        };
        assert!(!halted.may_run(false));
        assert!(halted.may_run(true), "an interrupt ends a halt");
        for stopped in [
            RunState {
                explicit_suspend: true,
                ..awake
            },
            RunState {
                intercept_suspend: true,
                ..awake
            },
            RunState {
                deleted: true,
                ..halted
            },
        ] {
            assert!(stopped.stopped());
            assert!(!stopped.may_run(true), "nothing wakes a stopped VP");
        }
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            Just(Step::Initialize),
            Just(Step::AddResources),
            Just(Step::Finalize)
        ]
    }

    proptest! {
        /// Whatever the root tries in whatever order: resources are only
        /// ever added to an initialized partition, nothing leaves
        /// Finalized, and a refused step changes nothing.
        #[test]
        fn no_sequence_breaks_the_order(steps in prop::collection::vec(step(), 0..20)) {
            let mut stage = Lifecycle::Created;
            let mut initialized = false;
            for s in steps {
                match stage.after(s) {
                    Ok(next) => {
                        if s == Step::AddResources {
                            prop_assert_eq!(stage, Lifecycle::Initialized);
                        }
                        if stage == Lifecycle::Finalized {
                            prop_assert_eq!(next, Lifecycle::Finalized);
                        }
                        if s == Step::Initialize {
                            prop_assert!(!initialized, "initialized twice");
                            initialized = true;
                        }
                        stage = next;
                    }
                    Err(e) => prop_assert_eq!(e, status::INVALID_PARTITION_STATE),
                }
            }
        }
    }
}
