//! The exit dispatcher of root VPs, as `guest.rs` is for guests. The root
//! owns the machine's devices, so most of what it does runs natively; what
//! exits is answered here: CPUID, the synthetic and x2APIC MSRs, CR8 (its
//! virtual TPR), XSETBV, HLT, and its hypercalls (management of partitions,
//! host information). An exit that means the root cannot go on stops it.
use crate::frame_alloc::PAGE_SIZE;
use crate::root::{self, RootPartition};
use crate::vcpu::{Exit, Vcpu, GP, UD};
use crate::virt::Caps;
use crate::x86::{cpu, msr};
use crate::{lp_state, stats, time};
use hv_abi::hypercall::{self, Input};
use hv_abi::synic::msr::{SINT0, SINT15};
use hypervisor_core::vapic::{self, VirtualApic};
use log::warn;

/// What the dispatcher decided.
pub enum Next {
    Resume,
    /// The VP halted: the LP idles until an interrupt for it is pending.
    Halted,
    /// The root cannot go on: report and power off.
    Stop(alloc::string::String),
}

/// The root's exits answered without the LP loop's bookkeeping: they change
/// nothing but the VP's registers (no interrupt, no other VP, no scheduling
/// decision), so the VP can be entered again at once. The exit's reason
/// for the counters; `None`: `dispatch` must handle it.
pub fn handle_fast(
    vcpu: &mut Vcpu,
    exit: &Exit,
    cpuid: &crate::cpuid_view::CpuidCache,
) -> Option<hv_abi::ExitReason> {
    match exit {
        Exit::Cpuid => {
            let r = vcpu.regs();
            let answer = cpuid.get(r.rax as u32, r.rcx as u32)?;
            vcpu.finish_cpuid(answer);
            Some(hv_abi::ExitReason::Cpuid)
        }
        _ => None,
    }
}

pub fn dispatch(
    root: &RootPartition,
    caps: &Caps,
    vcpu: &mut Vcpu,
    vapic: &mut VirtualApic,
    vp: u32,
    exit: Exit,
    buffers: &mut HypercallBuffers,
) -> Next {
    use alloc::format;
    match exit {
        Exit::Cpuid => {
            let r = vcpu.regs();
            let answer = crate::cpuid_view::for_root(r.rax as u32, r.rcx as u32, vp, root.vp_count);
            vcpu.finish_cpuid(answer);
            Next::Resume
        }
        Exit::MsrRead => {
            let m = vcpu.regs().rcx as u32;
            let value = match m {
                vapic::X2APIC_MSR_FIRST..=vapic::X2APIC_MSR_LAST => {
                    vcpu.pull_tpr(vapic);
                    vapic.read(m, cpu::rdtsc())
                }
                msr::IA32_APIC_BASE => Some(vapic::apic_base(vp)),
                _ => crate::synic::root_synic(vp)
                    .read_msr(m)
                    .or_else(|| read_msr(root, m)),
            };
            vcpu.finish_rdmsr(value);
            Next::Resume
        }
        Exit::MsrWrite => {
            let (m, v) = vcpu.wrmsr_operands();
            let done = match m {
                vapic::X2APIC_MSR_FIRST..=vapic::X2APIC_MSR_LAST => {
                    vcpu.pull_tpr(vapic);
                    match vapic.write(m, v, cpu::rdtsc()) {
                        vapic::Write::Done => true,
                        vapic::Write::Ipi { vector, dest } => {
                            send_ipi(root, vapic, vp, vector, dest);
                            true
                        }
                        // The root's VPs take host NMIs directly (no NMI
                        // exiting): virtual NMIs are for guests only.
                        vapic::Write::Nmi { .. } => {
                            warn!("root VP {vp}: NMI IPIs are not supported; ignored");
                            true
                        }
                        vapic::Write::Unsupported(mode) => {
                            warn!(
                                "root VP {vp}: IPI delivery mode {mode} is not supported; ignored"
                            );
                            true
                        }
                        // The root's VPs all start at its entry.
                        vapic::Write::Init { .. } | vapic::Write::Startup { .. } => {
                            warn!(
                                "root VP {vp}: INIT and start-up IPIs are not supported; ignored"
                            );
                            true
                        }
                        vapic::Write::Fault => false,
                    }
                }
                msr::IA32_APIC_BASE => vapic::apic_base_write_ok(vp, v),
                _ => {
                    let synic = crate::synic::root_synic(vp);
                    match synic.write_msr(&crate::synic::RootVp(root, vp), m, v, true) {
                        Some(done) => {
                            if (SINT0..=SINT15).contains(&m) {
                                vapic.set_auto_eoi(synic.auto_eoi_vectors());
                            }
                            done
                        }
                        None => write_msr(root, vcpu, m, v),
                    }
                }
            };
            vcpu.finish_wrmsr(done);
            Next::Resume
        }
        // TLFS: #UD below CPL 0 or in real mode, for the root's user code too.
        Exit::Hypercall if !vcpu.hypercall_allowed() => {
            vcpu.inject_exception(UD, None);
            Next::Resume
        }
        Exit::Hypercall => {
            if hypercall(root, caps, vcpu, buffers) {
                Next::Halted
            } else {
                Next::Resume
            }
        }
        Exit::CrAccess {
            cr: 8,
            write,
            gpr: Some(gpr),
        } => {
            if !vcpu.emulate_cr8(vapic, write, gpr) {
                vcpu.inject_exception(GP, Some(0));
            }
            Next::Resume
        }
        Exit::Halt => {
            vcpu.skip_instruction();
            Next::Halted
        }
        // As for guests: never natively (it would discard the hypervisor's
        // dirty cache lines); a no-op keeps memory coherent.
        Exit::Invd => {
            vcpu.skip_instruction();
            Next::Resume
        }
        Exit::Xsetbv => {
            let r = vcpu.regs();
            let (index, value) = (r.rcx as u32, (r.rdx << 32) | (r.rax & 0xFFFF_FFFF));
            // XCR0 must keep x87 and only name features the processor supports (CPUID 0xD).
            let supported = {
                let l = cpu::cpuid(0xD, 0);
                (l.edx as u64) << 32 | l.eax as u64
            };
            if index != 0
                || value & 1 == 0
                || value & !supported != 0
                || (value & 4 != 0 && value & 2 == 0)
            {
                vcpu.inject_exception(GP, Some(0));
            } else {
                // The root is the only partition on this LP and the hypervisor
                // uses no extended state: the live XCR0 is the root's.
                cpu::xsetbv(value);
                vcpu.skip_instruction();
            }
            Next::Resume
        }
        Exit::Undefined
        | Exit::Rdpmc
        | Exit::ExternalInterrupt
        | Exit::Preemption
        | Exit::InterruptWindow => {
            vcpu.handle_common(&exit);
            Next::Resume
        }
        Exit::Nmi => {
            warn!("NMI while running the root; ignored");
            Next::Resume
        }
        Exit::SlatViolation {
            gpa,
            write,
            execute,
        } => {
            let kind = if execute {
                "execute"
            } else if write {
                "write"
            } else {
                "read"
            };
            Next::Stop(format!(
                "{kind} of GPA {gpa:#x} at RIP {:#x}: {} memory, not the root's ({})",
                vcpu.rip(),
                if gpa == vapic::APIC_PAGE {
                    "the local APIC (kept by the hypervisor)"
                } else {
                    "hypervisor"
                },
                vcpu.describe()
            ))
        }
        Exit::TripleFault => Next::Stop(format!(
            "triple fault at RIP {:#x} ({})",
            vcpu.rip(),
            vcpu.describe()
        )),
        Exit::MachineCheck => Next::Stop(format!("machine check at RIP {:#x}", vcpu.rip())),
        Exit::Exception { vector, .. } => Next::Stop(format!(
            "unexpected exception exit (vector {vector}) at RIP {:#x}",
            vcpu.rip()
        )),
        Exit::CrAccess { .. } => Next::Stop(format!(
            "unsupported control-register change at RIP {:#x}",
            vcpu.rip()
        )),
        Exit::Io(io) => Next::Stop(format!("unexpected I/O exit for port {:#x}", io.port)),
        // Taken by the LP before dispatch (`DebugState::take_over`).
        Exit::DebugRegisterAccess => Next::Stop(format!(
            "unexpected debug-register exit at RIP {:#x}",
            vcpu.rip()
        )),
        Exit::EntryFailed(code) => Next::Stop(format!(
            "the processor refused to enter the VP (code {code:#x})"
        )),
        Exit::Other(code) => {
            Next::Stop(format!("unhandled exit {code:#x} at RIP {:#x}", vcpu.rip()))
        }
    }
}

/// A fixed IPI from VP `sender`: into each target's mailbox (or straight into
/// the sender's own APIC), and a kick to every other LP involved.
fn send_ipi(
    root: &RootPartition,
    vapic: &mut VirtualApic,
    sender: u32,
    vector: u8,
    dest: vapic::Dest,
) {
    for target in vapic::ipi_targets(0..root.vp_count, sender, dest) {
        if target == sender {
            vapic.request(vector);
        } else {
            root::raise_interrupt(target, vector);
        }
    }
}

fn read_msr(root: &RootPartition, m: u32) -> Option<u64> {
    if let Some(v) = root.hypercall_msrs.read(m) {
        return Some(v);
    }
    match m {
        hv_abi::msr::VP_INDEX => Some(crate::percpu::index() as u64),
        // 100 ns units since boot.
        hv_abi::msr::TIME_REF_COUNT => Some(time::reference().at(cpu::rdtsc())),
        // Locked, VMX off: the root may not use VMX.
        msr::IA32_FEATURE_CONTROL => Some(1),
        _ => None,
    }
}

fn write_msr(root: &RootPartition, vcpu: &mut Vcpu, m: u32, v: u64) -> bool {
    let page = vcpu.hypercall_page();
    let install = |gpa: u64| root.owns(gpa, PAGE_SIZE) && root.memory().write(gpa, &page).is_ok();
    if let Some(done) = root.hypercall_msrs.write(m, v, install) {
        return done;
    }
    match m {
        msr::IA32_EFER => vcpu.set_efer(v),
        _ => false,
    }
}

/// The root's hypercalls: checked against the dispatch table
/// (`hypervisor_core::hypercall`), then handled. The status goes to RAX (with the
/// reps completed in bits 43:32); a rep call that is not finished, or must
/// wait for a VP's LP, returns to the same instruction with its rep start
/// index advanced (TLFS rep continuation). `true` when the VP then halts
/// (a `..._THEN_IDLE` call done, interrupts enabled).
fn hypercall(
    root: &RootPartition,
    caps: &Caps,
    vcpu: &mut Vcpu,
    buffers: &mut HypercallBuffers,
) -> bool {
    use hypervisor_core::hypercall::{check, Caller, Form};
    let (rcx, rdx, r8) = {
        let r = vcpu.regs();
        (r.rcx, r.rdx, r.r8)
    };
    let finish = |vcpu: &mut Vcpu, status: u16, reps: u16| {
        vcpu.regs().rax = status as u64 | (reps as u64) << 32;
        vcpu.skip_instruction();
    };
    // The intercepts' resume, the hot path: an input value equal to the
    // register form's (fast, no reps, no variable header) is all there is
    // to check; the other registers are values.
    const COMPLETE: u64 = Input::fast(hypercall::COMPLETE_INTERCEPT).encode();
    const COMPLETE_THEN_IDLE: u64 = Input::fast(hypercall::COMPLETE_INTERCEPT_THEN_IDLE).encode();
    if rcx == COMPLETE || rcx == COMPLETE_THEN_IDLE {
        let (rax, rip) = {
            let r = vcpu.regs();
            (r.r9, r.r10)
        };
        let status = crate::partition::complete_intercept(rdx, r8, rax, rip);
        finish(vcpu, status, 0);
        return rcx == COMPLETE_THEN_IDLE
            && status == hypercall::status::SUCCESS
            && vcpu.interrupts_enabled();
    }
    let call = match check(rcx, rdx, r8, Caller::Root, &|gpa, len| root.owns(gpa, len)) {
        Ok(call) => call,
        Err(status) => {
            finish(vcpu, status, 0);
            return false;
        }
    };
    // The memory form of CompleteIntercept (the register form was taken
    // before the checks).
    if let hypercall::COMPLETE_INTERCEPT | hypercall::COMPLETE_INTERCEPT_THEN_IDLE = call.spec.code
    {
        finish(vcpu, hypercall::status::INVALID_HYPERCALL_INPUT, 0);
        return false;
    }
    // Input copied in (checked to be root memory, at most a page); the
    // output built in hypervisor memory and copied out.
    // Exactly the blocks' sizes: zeroing whole pages would cost more than
    // most calls.
    let in_len = match call.input_block {
        Some((_, len)) => len as usize,
        None if call.input.fast => 16,
        None => 0,
    };
    let out_len = call.output_block.map_or(0, |(_, len)| len as usize);
    let (input, out) = buffers.take(in_len, out_len);
    match call.input_block {
        Some((gpa, _)) if root.memory().read(gpa, input).is_err() => {
            finish(vcpu, hypercall::status::INVALID_PARAMETER, 0);
            return false;
        }
        Some(_) => {}
        None if call.input.fast => {
            input[..8].copy_from_slice(&rdx.to_le_bytes());
            input[8..16].copy_from_slice(&r8.to_le_bytes());
        }
        None => {}
    }
    // The `..._THEN_IDLE` calls are another call, then the halt.
    let (code, then_idle) = match call.spec.code {
        hypercall::SET_VP_REGISTERS_THEN_IDLE => (hv_abi::partition::code::SET_VP_REGISTERS, true),
        hypercall::SIGNAL_EVENT_DIRECT_THEN_IDLE => {
            (hv_abi::partition::code::SIGNAL_EVENT_DIRECT, true)
        }
        code => (code, false),
    };
    let (status, reps_done, written) = match code {
        hypercall::GET_HOST_INFO => {
            let ok = crate::host_info(root).encode(out).is_some();
            (ok_status(ok), 0, hv_abi::HostInfo::SIZE)
        }
        hypercall::GET_HOST_STATS => {
            let ok = hv_abi::HostStats::encode(
                &stats::snapshot(lp_state::all().map(|lp| &lp.stats)),
                out,
            )
            .is_some();
            (ok_status(ok), 0, PAGE_SIZE as usize)
        }
        hypercall::GET_HOST_LOG => {
            let from = input
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_le_bytes);
            let ok = crate::serial::read_log(from, out);
            (ok_status(ok), 0, PAGE_SIZE as usize)
        }
        // The intercepts' resume, the hot path: straight to the partition
        // calls (no port call to look for first).
        hv_abi::partition::code::SET_VP_REGISTERS => {
            let reps = (call.input.rep_start, call.input.rep_count);
            let o = crate::partition::call(root, caps, code, reps, input, out);
            (o.status, o.reps_done, o.output_len)
        }
        code => match crate::ports::call(root, code, input, out) {
            Some(Ok(n)) => (hypercall::status::SUCCESS, 0, n),
            Some(Err(s)) => (s, 0, 0),
            None => {
                let reps = (call.input.rep_start, call.input.rep_count);
                let o = crate::partition::call(root, caps, code, reps, input, out);
                // A deleted partition's ports and connections go with it.
                if code == hv_abi::partition::code::DELETE_PARTITION
                    && o.status == hypercall::status::SUCCESS
                {
                    if let Some(p) = hv_abi::layout::header::<hv_abi::layout::PartitionId>(input) {
                        crate::ports::forget(p.partition_id);
                    }
                }
                (o.status, o.reps_done, o.output_len)
            }
        },
    };
    if let Some((gpa, len)) = call.output_block {
        // A rep call writes only the elements this entry did: earlier
        // entries' stay as they were.
        let from = match call.spec.form {
            Form::Rep { element_out, .. } => {
                (element_out as usize * call.input.rep_start as usize).min(len as usize)
            }
            Form::Simple { .. } => 0,
        };
        let to = written.min(len as usize);
        if to > from
            && root
                .memory()
                .write(gpa + from as u64, &out[from..to])
                .is_err()
        {
            finish(vcpu, hypercall::status::INVALID_PARAMETER, reps_done);
            return false;
        }
    }
    let is_rep = matches!(call.spec.form, Form::Rep { .. });
    let unfinished =
        is_rep && status == hypercall::status::SUCCESS && reps_done < call.input.rep_count;
    if status == crate::partition::RETRY || unfinished {
        // Same instruction again, from the first rep not done.
        let mut input = call.input;
        input.rep_start = reps_done.max(call.input.rep_start);
        vcpu.regs().rcx = input.encode();
        return false;
    }
    finish(vcpu, status, reps_done);
    then_idle && status == hypercall::status::SUCCESS && vcpu.interrupts_enabled()
}

/// The root's hypercall input and output, copied in and out; kept from call
/// to call (an allocation per call would cost more than most calls).
#[derive(Default)]
pub struct HypercallBuffers {
    input: alloc::vec::Vec<u8>,
    output: alloc::vec::Vec<u8>,
}

impl HypercallBuffers {
    /// Buffers of exactly these sizes: the output zeroed, the input not
    /// (the caller overwrites all of it: the copied block or the two fast
    /// registers).
    fn take(&mut self, input: usize, output: usize) -> (&mut [u8], &mut [u8]) {
        if self.input.len() < input {
            self.input.resize(input, 0);
        }
        self.output.clear();
        self.output.resize(output, 0);
        (&mut self.input[..input], &mut self.output)
    }
}

fn ok_status(ok: bool) -> u16 {
    if ok {
        hypercall::status::SUCCESS
    } else {
        hypercall::status::INVALID_PARAMETER
    }
}
