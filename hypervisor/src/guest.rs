//! The exit dispatcher of guest VPs. The hypervisor answers what it can
//! itself (CPUID, the synthetic MSRs, EFER and the syscall MSRs, the x2APIC,
//! hypercalls, HLT with interrupts enabled, #DB/#AC re-injection, INVD); I/O ports, unmapped or protected GPAs, halts that can
//! never end, triple faults and failed entries suspend the VP and become an
//! intercept message to the root (TLFS "Intercepts"), whose VM worker
//! decides and resumes the VP with SetVpRegisters.
use crate::partition::{GuestVp, Partition};
use crate::ports::GuestVpOwner;
use crate::root::RootPartition;
use crate::time;
use crate::vcpu::{Exit, Vcpu, AC, DB, GP, UD};
use crate::virt::Caps;
use crate::x86::cpu;
use core::sync::atomic::Ordering;
use hv_abi::synic::{
    self, access, kind, unrecoverable, ExceptionIntercept, IoPortIntercept, MemoryIntercept,
    Message,
};
use hypervisor_core::control_regs;
use hypervisor_core::stimer::SynTimers;
use hypervisor_core::vapic::{self, VirtualApic};

/// What the LP does after a guest exit. (The message travels by value: a
/// box would be an allocation on every intercept.)
#[allow(clippy::large_enum_variant)]
pub enum Next {
    Resume,
    /// HLT with interrupts enabled: the VP waits for an interrupt.
    Halted,
    /// The VP is suspended; the message goes to the root.
    Intercept(Message),
}

pub fn dispatch(
    root: &RootPartition,
    caps: &Caps,
    part: &Partition,
    vp: &GuestVp,
    vcpu: &mut Vcpu,
    vapic: &mut VirtualApic,
    exit: Exit,
) -> Next {
    let header = |vcpu: &Vcpu, len: u8, acc: u8| vcpu.intercept_header(vp.index, len, acc);
    let fatal = |vcpu: &Vcpu, reason: u32| {
        Next::Intercept(synic::header_message(
            kind::UNRECOVERABLE_EXCEPTION,
            part.id,
            &header(vcpu, 0, 0),
            reason,
        ))
    };
    match exit {
        Exit::Cpuid => {
            let r = vcpu.regs();
            let answer = crate::cpuid_view::for_guest(r.rax as u32, r.rcx as u32, vp.index);
            vcpu.finish_cpuid(answer);
            Next::Resume
        }
        Exit::MsrRead => {
            let m = vcpu.regs().rcx as u32;
            let value = match m {
                vapic::X2APIC_MSR_FIRST..=vapic::X2APIC_MSR_LAST => vapic.read(m, cpu::rdtsc()),
                vapic::SYNTHETIC_EOI..=vapic::SYNTHETIC_TPR => vapic.synthetic_read(m),
                crate::x86::msr::IA32_APIC_BASE => Some(vapic.base()),
                m if SynTimers::owns(m) => vp.stimers.lock().read(m),
                _ => vp.synic.read_msr(m).or_else(|| read_msr(part, vcpu, vp, m)),
            };
            vcpu.finish_rdmsr(value);
            Next::Resume
        }
        Exit::MsrWrite => {
            let (m, v) = vcpu.wrmsr_operands();
            let done = match m {
                vapic::X2APIC_MSR_FIRST..=vapic::X2APIC_MSR_LAST => {
                    let w = vapic.write(m, v, cpu::rdtsc());
                    apic_effect(part, vp, vapic, w)
                }
                vapic::SYNTHETIC_EOI..=vapic::SYNTHETIC_TPR => {
                    let w = vapic.synthetic_write(m, v, cpu::rdtsc());
                    apic_effect(part, vp, vapic, w)
                }
                crate::x86::msr::IA32_APIC_BASE => {
                    let ok = vapic.write_base(v);
                    vp.xapic_ldr.store(vapic.xapic_ldr(), Ordering::Relaxed);
                    ok
                }
                m if SynTimers::owns(m) => {
                    let now = time::reference().at(cpu::rdtsc());
                    vp.stimers.lock().write(m, v, now).is_ok()
                }
                _ => vp
                    .synic
                    .write_msr(&GuestVpOwner(root, part, vp), m, v, false)
                    .unwrap_or_else(|| write_msr(root, part, vcpu, vp, m, v)),
            };
            vcpu.finish_wrmsr(done);
            // The guest says it crashed: the root learns why (its crash
            // properties) and ends the VM; this VP stops here.
            if done && m == hv_abi::msr::CRASH_CTL && v & hv_abi::msr::CRASH_NOTIFY != 0 {
                return fatal(vcpu, unrecoverable::GUEST_CRASH);
            }
            Next::Resume
        }
        Exit::Hypercall if !vcpu.hypercall_allowed() => {
            vcpu.inject_exception(UD, None);
            Next::Resume
        }
        Exit::Hypercall => {
            let rax = guest_hypercall(root, part, vp, vcpu);
            vcpu.regs().rax = rax;
            vcpu.skip_instruction();
            Next::Resume
        }
        // Caches stay coherent without it: done as a no-op (WBINVD's effect
        // without the flush), never natively.
        Exit::Invd => {
            vcpu.skip_instruction();
            Next::Resume
        }
        Exit::Halt => {
            vcpu.skip_instruction();
            if vcpu.interrupts_enabled() {
                Next::Halted
            } else {
                // Nothing can wake it: the root decides.
                Next::Intercept(synic::header_message(
                    kind::HALT,
                    part.id,
                    &header(vcpu, 1, 0),
                    0,
                ))
            }
        }
        Exit::Io(io) => {
            let r = vcpu.regs();
            let (rax, rcx, rsi, rdi) = (r.rax, r.rcx, r.rsi, r.rdi);
            let msg = IoPortIntercept {
                header: header(
                    vcpu,
                    io.length,
                    if io.write {
                        access::WRITE
                    } else {
                        access::READ
                    },
                ),
                port: io.port,
                size: io.size,
                string: io.string,
                rep: io.rep,
                rax,
                rcx,
                rsi,
                rdi,
            };
            Next::Intercept(msg.message(part.id))
        }
        Exit::SlatViolation {
            gpa,
            write,
            execute: false,
        } if gpa & !0xFFF == vapic::APIC_PAGE
            && vapic.mode() == vapic::Mode::XApic
            && xapic_access(root, part, vp, vcpu, vapic, gpa, write) =>
        {
            Next::Resume
        }
        Exit::SlatViolation {
            gpa,
            write,
            execute,
        } => {
            let acc = if execute {
                access::EXECUTE
            } else if write {
                access::WRITE
            } else {
                access::READ
            };
            let k = if part.translate(gpa).is_some() {
                kind::GPA_INTERCEPT
            } else {
                kind::UNMAPPED_GPA
            };
            let (instruction, instruction_len) = if k == kind::UNMAPPED_GPA {
                fetch_instruction(root, part, vcpu, vcpu.fetch_state())
            } else {
                ([0; 16], 0)
            };
            let msg = MemoryIntercept {
                header: header(vcpu, 0, acc),
                gva: 0,
                gpa,
                instruction_len,
                instruction,
            };
            Next::Intercept(msg.message(k, part.id))
        }
        // #DB and #AC exit always (vcpu::GUEST_EXCEPTIONS_ALWAYS); unless the
        // root asked for them they go back to the guest, one exit each.
        Exit::Exception {
            vector,
            error_code,
            length,
            ..
        } if (vector == DB || vector == AC)
            && part
                .exception_intercepts
                .load(core::sync::atomic::Ordering::Relaxed)
                & (1 << vector)
                == 0 =>
        {
            vcpu.reinject_exception(vector, error_code, length);
            Next::Resume
        }
        Exit::Exception {
            vector,
            error_code,
            parameter,
            ..
        } => {
            let msg = ExceptionIntercept {
                header: header(vcpu, 0, 0),
                vector: vector as u16,
                error_code,
                parameter,
            };
            Next::Intercept(msg.message(part.id))
        }
        Exit::TripleFault => fatal(vcpu, unrecoverable::TRIPLE_FAULT),
        Exit::EntryFailed(_) => fatal(vcpu, unrecoverable::ENTRY_FAILED),
        Exit::CrAccess {
            cr: 8,
            write: false,
            gpr: Some(gpr),
        } => {
            vcpu.emulate_cr8(vapic, false, gpr);
            Next::Resume
        }
        Exit::CrAccess {
            cr: cr @ (0 | 4 | 8),
            write: true,
            gpr,
        } => {
            write_cr(root, caps, part, vcpu, vapic, cr, gpr);
            Next::Resume
        }
        // DebugRegisterAccess: taken by the LP before dispatch.
        Exit::CrAccess { .. } | Exit::MachineCheck | Exit::DebugRegisterAccess | Exit::Other(_) => {
            fatal(vcpu, unrecoverable::UNSUPPORTED)
        }
        // XSAVE is hidden (CPUID), so XSETBV is #UD as on a processor without it.
        Exit::Xsetbv => {
            vcpu.inject_exception(UD, None);
            Next::Resume
        }
        Exit::Nmi => Next::Resume,
        Exit::Undefined
        | Exit::Rdpmc
        | Exit::ExternalInterrupt
        | Exit::Preemption
        | Exit::InterruptWindow => {
            vcpu.handle_common(&exit);
            Next::Resume
        }
    }
}

/// A guest's MOV to CR4 (a bit it may not own, or any on SVM) or CR8 (its
/// virtual TPR) that exited. The source register is the processor's word,
/// else the instruction is fetched through the guest's page tables and
/// decoded; one that cannot be (another VP changed it) runs again.
fn write_cr(
    root: &RootPartition,
    caps: &Caps,
    part: &Partition,
    vcpu: &mut Vcpu,
    vapic: &mut VirtualApic,
    cr: u8,
    gpr: Option<u8>,
) {
    let (gpr, length) = match gpr {
        Some(g) => (g, None),
        None => match fetch_mov_to_cr(root, part, vcpu) {
            Some((c, g, len)) if c == cr => (g, Some(len)),
            _ => return,
        },
    };
    let value = vcpu.gpr(gpr);
    let done = if cr == 8 {
        vapic.set_cr8(value)
    } else if cr == 0 {
        vcpu.set_cr0(caps, value)
    } else {
        let (old, cr3) = vcpu.cr4_cr3();
        let long_mode = vcpu.efer() & (1 << 10) != 0;
        control_regs::guest_cr4_ok(
            value,
            crate::cpuid_view::guest_cr4_allowed(),
            long_mode,
            old,
            cr3,
        ) && {
            vcpu.set_cr4(caps, value);
            true
        }
    };
    match (done, length) {
        (false, _) => vcpu.inject_exception(GP, Some(0)),
        (true, Some(len)) => vcpu.advance_rip(len),
        (true, None) => vcpu.skip_instruction(),
    }
}

/// Decodes the MOV to CR at the VP's CS:RIP.
fn fetch_mov_to_cr(root: &RootPartition, part: &Partition, vcpu: &Vcpu) -> Option<(u8, u8, u8)> {
    let state = vcpu.fetch_state();
    let (bytes, len) = fetch_instruction(root, part, vcpu, state);
    control_regs::decode_mov_to_cr(&bytes[..len as usize], state.2)
}

/// The bytes at the VP's CS:RIP, up to 15 read through its own page tables
/// (fewer where the second page is not mapped; none if the first is not).
/// `state`: the VP's `Vcpu::fetch_state`.
fn fetch_instruction(
    root: &RootPartition,
    part: &Partition,
    vcpu: &Vcpu,
    state: (control_regs::Paging, u64, bool, u64),
) -> ([u8; 16], u8) {
    let (paging, cr3, _, cs_base) = state;
    let read = |gpa: u64, n: usize| {
        let mut b = [0u8; 8];
        part.read(root, gpa, &mut b[..n.min(8)])
            .then(|| u64::from_le_bytes(b))
    };
    let la = cs_base.wrapping_add(vcpu.rip());
    let mut bytes = [0u8; 16];
    let first = (4096 - (la & 0xFFF) as usize).min(15);
    let Some(gpa) = control_regs::translate(paging, cr3, la, &read) else {
        return (bytes, 0);
    };
    if !part.read(root, gpa, &mut bytes[..first]) {
        return (bytes, 0);
    }
    let next = (first < 15)
        .then(|| control_regs::translate(paging, cr3, la.wrapping_add(first as u64), &read))
        .flatten();
    let len = if next.is_some_and(|gpa| part.read(root, gpa, &mut bytes[first..15])) {
        15
    } else {
        first
    };
    (bytes, len as u8)
}

/// What an APIC register write asks for, done: IPIs, INIT and start-up.
/// False: #GP.
fn apic_effect(part: &Partition, vp: &GuestVp, vapic: &mut VirtualApic, w: vapic::Write) -> bool {
    match w {
        vapic::Write::Done => true,
        vapic::Write::Ipi { vector, dest } => {
            send_ipi(part, vp, vapic, Some(vector), dest);
            true
        }
        vapic::Write::Nmi { dest } => {
            send_ipi(part, vp, vapic, None, dest);
            true
        }
        vapic::Write::Init { dest } => {
            start_up(part, vp, dest, None);
            true
        }
        vapic::Write::Startup { vector, dest } => {
            start_up(part, vp, dest, Some(vector));
            true
        }
        // SMI, lowest priority: not offered; ignored like a lost IPI.
        vapic::Write::Unsupported(_) => true,
        vapic::Write::Fault => false,
    }
}

/// A read or write of the xAPIC register page (the APIC in xAPIC mode):
/// the instruction at RIP is decoded (a MOV form, `hypervisor_core::mmio`)
/// and emulated on the VP's APIC. A 32-bit access reaches a register; a
/// narrower one reads its bytes and writes nothing. False: not an
/// instruction decoded here (the root gets the access, as any MMIO).
fn xapic_access(
    root: &RootPartition,
    part: &Partition,
    vp: &GuestVp,
    vcpu: &mut Vcpu,
    vapic: &mut VirtualApic,
    gpa: u64,
    write: bool,
) -> bool {
    use hypervisor_core::mmio;
    let state = vcpu.fetch_state();
    let (bytes, len) = fetch_instruction(root, part, vcpu, state);
    let Some(a) = mmio::decode(&bytes[..len as usize], state.2) else {
        return false;
    };
    if a.write != write || (gpa & 0xFFF) + u64::from(a.size) > 0x1000 {
        return false;
    }
    let offset = (gpa & 0xFF0) as u32;
    // A register is the first 4 bytes of its 16; the rest read as 0.
    let shift = (gpa & 0xF) * 8;
    let now = cpu::rdtsc();
    if write {
        let held = a.operand.register().map_or(0, |r| vcpu.gpr(r));
        let value = a.operand.write_value(held);
        if a.size == 4 && gpa & 0xF == 0 {
            let w = vapic.mmio_write(offset, value as u32, now);
            vp.xapic_ldr.store(vapic.xapic_ldr(), Ordering::Relaxed);
            // Nothing on the register page faults.
            apic_effect(part, vp, vapic, w);
        }
    } else if let Some(r) = a.operand.register() {
        let register = u64::from(vapic.mmio_read(offset, now))
            .checked_shr(shift as u32)
            .unwrap_or(0);
        let old = vcpu.gpr(r);
        vcpu.set_gpr(r, mmio::merge_read(old, register, &a));
    }
    vcpu.advance_rip(a.length);
    true
}

/// An IPI from guest VP `sender` to the VPs of its partition that `dest`
/// names, fixed (`vector`) or an NMI (`None`): straight into its own APIC,
/// the others' posted.
fn send_ipi(
    part: &Partition,
    sender: &GuestVp,
    vapic: &mut VirtualApic,
    vector: Option<u8>,
    dest: vapic::Dest,
) {
    for target in part.vps() {
        let ldr = target.xapic_ldr.load(Ordering::Relaxed);
        if !vapic::reaches_xapic(dest, sender.index, target.index, ldr) {
            continue;
        }
        // A deleted target takes nothing, as a missing APIC would.
        match (target.index == sender.index, vector) {
            (true, Some(v)) => vapic.request(v),
            (true, None) => vapic.request_nmi(),
            (false, Some(v)) => {
                let _ = target.post_interrupt(v);
            }
            (false, None) => {
                let _ = target.post_nmi();
            }
        }
    }
}

/// INIT (`None`) or a start-up IPI (`Some(vector)`) from `sender` to the
/// VPs `dest` names. As on a PC booting its application processors: a VP
/// the root has not started (explicitly suspended) waits for a start-up IPI
/// after an INIT; the start-up IPI starts it in real mode at CS:IP =
/// (vector << 8):0, the rest of its state as after INIT (SDM vol. 3 section
/// 9.4, "Multiple-Processor Initialization"). A running VP ignores both (an
/// INIT that resets a running VP is not modelled).
fn start_up(part: &Partition, sender: &GuestVp, dest: vapic::Dest, vector: Option<u8>) {
    for target in part.vps() {
        let ldr = target.xapic_ldr.load(Ordering::Relaxed);
        if target.index == sender.index
            || !vapic::reaches_xapic(dest, sender.index, target.index, ldr)
        {
            continue;
        }
        let mut s = target.shared.lock();
        if s.deleted || !s.explicit_suspend {
            continue;
        }
        match vector {
            None => {
                s.wait_for_sipi = true;
                s.apic_init = true;
            }
            Some(v) if s.wait_for_sipi => {
                let mut ctx = hv_abi::partition::VpContext::reset();
                ctx.seg[1].selector = (v as u16) << 8;
                ctx.seg[1].base = (v as u64) << 12;
                ctx.rip = 0;
                s.ctx = ctx;
                s.dirty = true;
                s.dirty_beyond_registers = true;
                s.stale = false;
                s.registers_only = false;
                s.completed = None;
                s.wait_for_sipi = false;
                s.explicit_suspend = false;
                drop(s);
                crate::smp::kick(target.lp);
            }
            Some(_) => {}
        }
    }
}

fn read_msr(part: &Partition, vcpu: &Vcpu, vp: &GuestVp, m: u32) -> Option<u64> {
    use hv_abi::msr;
    if let Some(v) = part.hypercall_msrs.read(m) {
        return Some(v);
    }
    let value = match m {
        msr::VP_INDEX => Some(vp.index as u64),
        msr::TIME_REF_COUNT => Some(time::reference().at(cpu::rdtsc())),
        msr::REFERENCE_TSC if time::reference().page_usable() => {
            Some(part.reference_tsc.load(Ordering::Relaxed))
        }
        // The virtual APIC's timer counts at the TSC's rate.
        msr::TSC_FREQUENCY | msr::APIC_FREQUENCY => Some(time::tsc_hz()),
        msr::VP_ASSIST_PAGE => Some(vp.vp_assist.load(Ordering::Relaxed)),
        msr::CRASH_P0..=msr::CRASH_CTL if m != msr::CRASH_CTL => {
            Some(part.crash[(m - msr::CRASH_P0) as usize].load(Ordering::Relaxed))
        }
        // What the guest may tell: that it crashed, with a message.
        msr::CRASH_CTL => Some(msr::CRASH_NOTIFY | msr::CRASH_MESSAGE),
        crate::x86::msr::IA32_EFER => Some(vcpu.efer()),
        // IA32_TIME_STAMP_COUNTER: the TSC as RDTSC reads it (not offset).
        0x10 => Some(cpu::rdtsc()),
        // IA32_MISC_ENABLE (Intel only): fast strings, nothing else.
        0x1A0 if matches!(vcpu, Vcpu::Vmx(_)) => Some(1),
        _ => vcpu.state_msr(m).or_else(|| vcpu.syscall_msr(m)),
    };
    if value.is_none() {
        refused(part, vp, m, false);
    }
    value
}

/// An MSR access answered with #GP: kept for the root's report (`vm show`),
/// logged the first time per partition.
fn refused(part: &Partition, vp: &GuestVp, m: u32, write: bool) {
    if part.gp_msrs.record(m, write) {
        log::info!(
            "partition {} VP {}: {} of MSR {m:#x} refused (#GP)",
            part.id,
            vp.index,
            if write { "WRMSR" } else { "RDMSR" }
        );
    }
}

fn write_msr(
    root: &RootPartition,
    part: &Partition,
    vcpu: &mut Vcpu,
    vp: &GuestVp,
    m: u32,
    v: u64,
) -> bool {
    use hv_abi::msr;
    let page = vcpu.hypercall_page();
    if let Some(done) = part
        .hypercall_msrs
        .write(m, v, |gpa| part.write(root, gpa, &page))
    {
        return done;
    }
    let done = match m {
        crate::x86::msr::IA32_EFER => vcpu.set_efer(v),
        // MISC_ENABLE: its value may be written back unchanged, nothing more.
        0x1A0 if matches!(vcpu, Vcpu::Vmx(_)) => v == 1,
        // Bits 11:1 reserved. Enabling fills the page: sequence 1, and the
        // scale and offset that give the reference counter's value.
        // Offered only where a page can describe the TSC (CPUID).
        msr::REFERENCE_TSC if time::reference().page_usable() => {
            let gpa = v & !0xFFF;
            let page = time::reference().page(1).unwrap_or_default();
            let ok = v & 0xFFE == 0 && (v & 1 == 0 || part.write(root, gpa, &page));
            if ok {
                part.reference_tsc.store(v, Ordering::Relaxed);
            }
            ok
        }
        msr::CRASH_P0..=msr::CRASH_CTL => {
            part.crash[(m - msr::CRASH_P0) as usize].store(v, Ordering::Relaxed);
            true
        }
        msr::VP_ASSIST_PAGE => {
            let ok = v & 0xFFE == 0 && (v & 1 == 0 || part.translate(v & !0xFFF).is_some());
            if ok {
                vp.vp_assist.store(v, Ordering::Relaxed);
            }
            ok
        }
        _ => vcpu
            .set_state_msr(m, v)
            .unwrap_or_else(|| vcpu.set_syscall_msr(m, v)),
    };
    if !done {
        refused(part, vp, m, true);
    }
    done
}

/// A guest's hypercall: through the same dispatch table and checks as the
/// root's (a management call gets ACCESS_DENIED, after any fault of its
/// input value). Returns RAX: the status, and the reps completed in 43:32.
fn guest_hypercall(root: &RootPartition, part: &Partition, vp: &GuestVp, vcpu: &mut Vcpu) -> u64 {
    use hv_abi::hypercall::status;
    use hv_abi::layout::{self, FlushVirtualAddressSpace, GetVpRegisters};
    use hv_abi::partition::{code, flush, reg, PARTITION_SELF, VP_SELF};
    use hypervisor_core::hypercall::{check, Caller};
    let r = *vcpu.regs();
    // The guest's memory: every page of the block mapped.
    let owns = |gpa: u64, len: u64| {
        let end = gpa.saturating_add(len.max(1));
        (gpa & !0xFFF..end)
            .step_by(4096)
            .all(|p| part.translate(p).is_some())
    };
    let call = match check(r.rcx, r.rdx, r.r8, Caller::Guest, &owns) {
        Ok(call) => call,
        Err(s) => return s as u64,
    };
    // Copied in before anything is read from it (a fast call's from RDX
    // and R8).
    let mut input = alloc::vec![0u8; call.input_block.map_or(0, |(_, len)| len as usize)];
    match call.input_block {
        Some((gpa, _)) if !part.read(root, gpa, &mut input) => {
            return status::INVALID_PARAMETER as u64;
        }
        Some(_) => {}
        None if call.input.fast => {
            input.extend_from_slice(&r.rdx.to_le_bytes());
            input.extend_from_slice(&r.r8.to_le_bytes());
        }
        None => {}
    }
    let reps = call.input.rep_count;
    match call.spec.code {
        code::FLUSH_VIRTUAL_ADDRESS_SPACE | code::FLUSH_VIRTUAL_ADDRESS_LIST => {
            // The same header for the List form; its GVA ranges are not read.
            let flags =
                layout::header::<FlushVirtualAddressSpace>(&input).map_or(u64::MAX, |h| h.flags);
            if flags & !flush::VALID != 0 {
                return status::INVALID_PARAMETER as u64;
            }
            // Every VP's whole TLB (the VPID / ASID): a superset of any
            // address list and processor mask, which the TLFS allows.
            crate::partition::flush_tlbs(part, &part.vps(), Some(vp));
            let done = if call.spec.code == code::FLUSH_VIRTUAL_ADDRESS_LIST {
                reps
            } else {
                0
            };
            status::SUCCESS as u64 | (done as u64) << 32
        }
        code::GET_VP_REGISTERS => {
            // The dispatch table sized the block: the header is there.
            let Some(h) = layout::header::<GetVpRegisters>(&input) else {
                return status::INVALID_PARAMETER as u64;
            };
            if h.partition_id != PARTITION_SELF && h.partition_id != part.id {
                return status::ACCESS_DENIED as u64;
            }
            if h.vp_index != VP_SELF && h.vp_index != vp.index {
                return status::ACCESS_DENIED as u64;
            }
            if h.input_vtl != 0 {
                return status::INVALID_PARAMETER as u64;
            }
            let mut ctx = hv_abi::partition::VpContext::default();
            vcpu.save_context(&mut ctx);
            let mut out = alloc::vec![0u8; call.output_block.map_or(0, |(_, len)| len as usize)];
            // A running VP is suspended neither way.
            let value = |name| match name {
                reg::EXPLICIT_SUSPEND | reg::INTERCEPT_SUSPEND => Ok(0),
                _ => ctx.get(name).map_err(|_| status::INVALID_PARAMETER),
            };
            let window = call.input.rep_start..reps;
            if let Err((s, i)) =
                hypervisor_core::hypercall::get_vp_registers(&input, &mut out, window, value)
            {
                return s as u64 | (i as u64) << 32;
            }
            if let Some((gpa, _)) = call.output_block {
                if !part.write(root, gpa, &out) {
                    return status::INVALID_PARAMETER as u64;
                }
            }
            status::SUCCESS as u64 | (reps as u64) << 32
        }
        code::POST_MESSAGE => {
            let r = crate::ports::post_message(root, part.id, &input);
            r.err().unwrap_or(status::SUCCESS) as u64
        }
        code::SIGNAL_EVENT => {
            let r = crate::ports::signal_event(root, part.id, &input);
            r.err().unwrap_or(status::SUCCESS) as u64
        }
        // Every other call in the table is the root's.
        _ => status::ACCESS_DENIED as u64,
    }
}
