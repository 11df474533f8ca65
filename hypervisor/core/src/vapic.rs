//! A virtual local APIC (Intel SDM vol. 3 chapter 11): registers, the timer,
//! interrupt priority and the ICR, in x2APIC mode (the MSR map, section
//! 11.12) or in xAPIC mode (the register page at its base address, section
//! 11.4.1, which a guest reaches by MMIO), with the mode switches of
//! IA32_APIC_BASE (section 11.12.5). Pure state: the hypervisor feeds it
//! register accesses and the TSC, and asks it which vector to deliver;
//! delivery to other VPs is the caller's job.
//!
//! The timer counts at the TSC rate divided by the divide configuration (the
//! virtual bus runs at the TSC's frequency). TSC-deadline mode is not offered.

pub const X2APIC_MSR_FIRST: u32 = 0x800;
pub const X2APIC_MSR_LAST: u32 = 0x8FF;
/// The local APIC's architectural base (its page stays the hypervisor's).
pub const APIC_PAGE: u64 = 0xFEE0_0000;

/// IA32_APIC_BASE of VP `vp` (root and guest VPs alike): the architectural
/// base, enabled, x2APIC mode, BSP on VP 0.
pub fn apic_base(vp: u32) -> u64 {
    APIC_PAGE | (1 << 11) | (1 << 10) | ((vp == 0) as u64) << 8
}

/// A root VP's write of IA32_APIC_BASE is accepted only as a no-op: its
/// APIC stays enabled in x2APIC mode at its base (the BSP bit is ignored).
pub fn apic_base_write_ok(vp: u32, value: u64) -> bool {
    value & !(1 << 8) == apic_base(vp) & !(1 << 8)
}

/// Whether an IPI from VP `sender` to `dest` reaches VP `target` (x2APIC
/// ID = VP index).
pub fn reaches(dest: Dest, sender: u32, target: u32) -> bool {
    reaches_xapic(dest, sender, target, 0)
}

/// [`reaches`], for a target whose xAPIC logical destination register
/// holds `target_ldr` (what xAPIC logical destinations are matched with).
pub fn reaches_xapic(dest: Dest, sender: u32, target: u32, target_ldr: u32) -> bool {
    let mut apic = VirtualApic::new(target);
    apic.xldr = target_ldr;
    apic.accepts(dest, sender)
}

/// The Hyper-V APIC MSRs (TLFS): EOI, ICR and TPR.
pub const SYNTHETIC_EOI: u32 = 0x4000_0070;
pub const SYNTHETIC_ICR: u32 = 0x4000_0071;
pub const SYNTHETIC_TPR: u32 = 0x4000_0072;

/// IA32_APIC_BASE bits: enabled, x2APIC mode, bootstrap processor.
const BASE_EN: u64 = 1 << 11;
const BASE_EXTD: u64 = 1 << 10;
const BASE_BSP: u64 = 1 << 8;

/// The APIC's mode, as IA32_APIC_BASE sets it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Hardware-disabled: no registers, no interrupts.
    Disabled,
    /// The register page at the base address (MMIO).
    XApic,
    /// The MSRs 0x800-0x8FF.
    X2Apic,
}

/// The VPs among `vps` that an IPI from VP `sender` to `dest` reaches.
pub fn ipi_targets(
    vps: impl Iterator<Item = u32>,
    sender: u32,
    dest: Dest,
) -> impl Iterator<Item = u32> {
    vps.filter(move |&t| reaches(dest, sender, t))
}

/// Version register: version 0x14, six LVT entries (max LVT index 5).
const VERSION: u64 = 0x0005_0014;
const MASKED: u32 = 1 << 16;
const SVR_ENABLE: u32 = 1 << 8;

/// Where an IPI goes (ICR destination shorthand and mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    /// Physical x2APIC ID; 0xFFFF_FFFF is every VP.
    Physical(u32),
    /// x2APIC logical: cluster in bits 31:16, member bitmap in bits 15:0.
    Logical(u32),
    /// xAPIC logical, flat model: a bitmap matched with each LDR's bits
    /// 31:24.
    FlatLogical(u8),
    /// xAPIC logical, cluster model: cluster in bits 7:4 (15: every
    /// cluster), member bitmap in bits 3:0.
    ClusterLogical(u8),
    SelfOnly,
    AllIncludingSelf,
    AllExcludingSelf,
}

/// What a register write asks of the hypervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    Done,
    /// A fixed interrupt to other VPs (or this one).
    Ipi {
        vector: u8,
        dest: Dest,
    },
    /// An NMI to other VPs (or this one).
    Nmi {
        dest: Dest,
    },
    /// INIT (asserted): the targets wait for a start-up IPI.
    Init {
        dest: Dest,
    },
    /// Start-up IPI: targets waiting for one start in real mode at
    /// `vector << 12`.
    Startup {
        vector: u8,
        dest: Dest,
    },
    /// A delivery mode this APIC does not offer (SMI, lowest priority and
    /// the reserved ones): ignored.
    Unsupported(u8),
    /// A read-only or unknown register, reserved bits, or an illegal vector: #GP.
    Fault,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualApic {
    id: u32,
    tpr: u32,
    svr: u32,
    esr: u32,
    irr: [u32; 8],
    isr: [u32; 8],
    /// The highest vector set in `irr` and in `isr`, kept with them: the
    /// delivery check runs before every entry, the bits change rarely.
    irr_top: Option<u8>,
    isr_top: Option<u8>,
    /// LVT: CMCI, timer, thermal, performance, LINT0, LINT1, error.
    lvt: [u32; 7],
    icr: u64,
    timer_initial: u32,
    divide_config: u32,
    /// TSC of the next expiry, while the timer runs.
    deadline: Option<u64>,
    /// An NMI waits for the VP (one is latched; more while it waits are lost,
    /// as on hardware).
    nmi: bool,
    /// Vectors that end at delivery (TLFS AutoEOI SINTs): never in service,
    /// so their handler needs no EOI and the VP no exit for one.
    auto_eoi: [u32; 8],
    /// IA32_APIC_BASE: the mode bits and the BSP bit (the base is fixed).
    base: u64,
    /// xAPIC logical destination (bits 31:24) and destination format
    /// (bits 31:28: 0xF flat, 0x0 cluster) registers.
    xldr: u32,
    xdfr: u32,
    /// xAPIC ICR bits 63:32 (the destination in bits 31:24).
    icr_high: u32,
}

const LVT_CMCI: usize = 0;
const LVT_TIMER: usize = 1;

fn lvt_index(msr: u32) -> Option<usize> {
    match msr {
        0x82F => Some(0),
        0x832..=0x837 => Some((msr - 0x831) as usize),
        _ => None,
    }
}

impl VirtualApic {
    /// The state after reset, already in x2APIC mode, software-disabled.
    pub fn new(id: u32) -> Self {
        Self::in_mode(id, apic_base(id))
    }

    /// The state after reset with IA32_APIC_BASE `base`.
    fn in_mode(id: u32, base: u64) -> Self {
        VirtualApic {
            id,
            tpr: 0,
            svr: 0xFF,
            esr: 0,
            irr: [0; 8],
            isr: [0; 8],
            irr_top: None,
            isr_top: None,
            lvt: [MASKED; 7],
            icr: 0,
            timer_initial: 0,
            divide_config: 0,
            deadline: None,
            nmi: false,
            auto_eoi: [0; 8],
            base,
            xldr: 0,
            xdfr: 0xF000_0000,
            icr_high: 0,
        }
    }

    /// An INIT: the registers as after reset, the mode and base kept (SDM
    /// vol. 3 section 11.4.7.3).
    pub fn init_reset(&mut self) {
        let auto_eoi = self.auto_eoi;
        *self = Self::in_mode(self.id, self.base);
        self.auto_eoi = auto_eoi;
    }

    /// IA32_APIC_BASE as the VP reads it.
    pub fn base(&self) -> u64 {
        self.base
    }

    pub fn mode(&self) -> Mode {
        match (self.base & BASE_EN != 0, self.base & BASE_EXTD != 0) {
            (true, true) => Mode::X2Apic,
            (true, false) => Mode::XApic,
            _ => Mode::Disabled,
        }
    }

    /// A WRMSR of IA32_APIC_BASE; false for #GP: reserved bits, a moved
    /// base (relocation is not offered), or a transition the SDM forbids
    /// (x2APIC to xAPIC, disabled to x2APIC; section 11.12.5). Disabling
    /// resets the APIC (section 11.4.3); the BSP bit is read-only here.
    pub fn write_base(&mut self, value: u64) -> bool {
        if value & !(BASE_EN | BASE_EXTD | BASE_BSP) != APIC_PAGE
            || (value & BASE_EXTD != 0 && value & BASE_EN == 0)
        {
            return false;
        }
        let to = match value & BASE_EXTD != 0 {
            true => Mode::X2Apic,
            false if value & BASE_EN != 0 => Mode::XApic,
            false => Mode::Disabled,
        };
        match (self.mode(), to) {
            (Mode::X2Apic, Mode::XApic) | (Mode::Disabled, Mode::X2Apic) => return false,
            (from, Mode::Disabled) if from != Mode::Disabled => {
                let auto_eoi = self.auto_eoi;
                *self = Self::in_mode(self.id, self.base);
                self.auto_eoi = auto_eoi;
            }
            _ => {}
        }
        self.base = (self.base & BASE_BSP) | APIC_PAGE | (value & (BASE_EN | BASE_EXTD));
        true
    }

    /// The xAPIC logical destination register (what xAPIC logical IPIs
    /// to this APIC are matched with).
    pub fn xapic_ldr(&self) -> u32 {
        self.xldr
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    /// CR8 as the VP reads it: TPR bits 7:4.
    pub fn cr8(&self) -> u64 {
        (self.tpr >> 4) as u64
    }

    /// A MOV to CR8: TPR bits 7:4, bits 3:0 cleared. False for a value
    /// above 15 (reserved bits set: #GP, the TPR unchanged).
    pub fn set_cr8(&mut self, value: u64) -> bool {
        if value > 15 {
            return false;
        }
        self.tpr = (value as u32) << 4;
        true
    }

    /// x2APIC logical ID: cluster (ID bits 31:4) and one bit for ID bits 3:0.
    pub fn logical_id(&self) -> u32 {
        ((self.id >> 4) << 16) | (1 << (self.id & 0xF))
    }

    /// Whether an IPI to `dest` from VP `sender` reaches this APIC.
    pub fn accepts(&self, dest: Dest, sender: u32) -> bool {
        match dest {
            Dest::Physical(id) => id == self.id || id == u32::MAX,
            Dest::Logical(l) => {
                l >> 16 == self.logical_id() >> 16 && l & self.logical_id() & 0xFFFF != 0
            }
            Dest::FlatLogical(mask) => (self.xldr >> 24) as u8 & mask != 0,
            Dest::ClusterLogical(mda) => {
                let ldr = (self.xldr >> 24) as u8;
                (mda >> 4 == 0xF || mda >> 4 == ldr >> 4) && mda & ldr & 0xF != 0
            }
            Dest::SelfOnly => sender == self.id,
            Dest::AllIncludingSelf => true,
            Dest::AllExcludingSelf => sender != self.id,
        }
    }

    fn divisor(&self) -> u64 {
        let x = (self.divide_config & 3) | ((self.divide_config & 8) >> 1);
        if x == 7 {
            1
        } else {
            2 << x
        }
    }

    fn highest(bits: &[u32; 8]) -> Option<u8> {
        // Nothing set is the common case on every entry: one unrolled OR
        // instead of a loop over the eight words.
        if bits.iter().fold(0, |a, &w| a | w) == 0 {
            return None;
        }
        (0..8)
            .rev()
            .find(|&i| bits[i] != 0)
            .map(|i| (i * 32 + 31 - bits[i].leading_zeros() as usize) as u8)
    }

    fn ppr(&self) -> u32 {
        let isr_class = self.isr_top.map_or(0, |v| v as u32 & 0xF0);
        if self.tpr & 0xF0 >= isr_class {
            self.tpr & 0xFF
        } else {
            isr_class
        }
    }

    /// Marks `vector` requested. Vectors below 16 are illegal and are dropped
    /// (with the receive-illegal-vector error bit).
    pub fn request(&mut self, vector: u8) {
        if vector < 16 {
            self.esr |= 1 << 6;
            return;
        }
        self.irr[vector as usize / 32] |= 1 << (vector % 32);
        self.irr_top = self.irr_top.max(Some(vector));
    }

    /// An NMI for the VP. It is accepted even with the APIC software-disabled
    /// (SDM vol. 3 section 11.4.7.2).
    pub fn request_nmi(&mut self) {
        self.nmi = true;
    }

    pub fn nmi_pending(&self) -> bool {
        self.nmi
    }

    /// The VP took the pending NMI.
    pub fn accept_nmi(&mut self) {
        self.nmi = false;
    }

    /// The vector to deliver now, if any: the highest requested one whose
    /// priority class is above the processor priority, with the APIC enabled.
    pub fn deliverable(&self) -> Option<u8> {
        if self.svr & SVR_ENABLE == 0 || self.base & BASE_EN == 0 {
            return None;
        }
        let v = self.irr_top?;
        (v as u32 & 0xF0 > self.ppr() & 0xF0).then_some(v)
    }

    /// The VP took `vector`: it moves from requested to in service (an
    /// AutoEOI vector ends there and then).
    pub fn accept(&mut self, vector: u8) {
        let (word, bit) = (vector as usize / 32, 1 << (vector % 32));
        self.irr[word] &= !bit;
        self.irr_top = Self::highest(&self.irr);
        if self.auto_eoi[word] & bit == 0 {
            self.isr[word] |= bit;
            self.isr_top = self.isr_top.max(Some(vector));
        }
    }

    /// The vectors that end at delivery, a bit per vector (from the SynIC's
    /// SINTs that ask for AutoEOI).
    pub fn set_auto_eoi(&mut self, vectors: [u32; 8]) {
        self.auto_eoi = vectors;
    }

    fn eoi(&mut self) {
        if let Some(v) = self.isr_top {
            self.isr[v as usize / 32] &= !(1 << (v % 32));
            self.isr_top = Self::highest(&self.isr);
        }
    }

    /// When the timer next needs attention (TSC), if it runs.
    pub fn deadline(&self) -> Option<u64> {
        self.deadline
    }

    /// Advances the timer to `now`: an expiry requests the timer's vector
    /// (unless masked) and rearms a periodic timer.
    /// Inline: a timer not due (or none) is the common case, two compares.
    #[inline]
    pub fn tick(&mut self, now: u64) {
        if let Some(deadline) = self.deadline.filter(|&d| now >= d) {
            self.expire(now, deadline);
        }
    }

    #[inline(never)]
    fn expire(&mut self, now: u64, deadline: u64) {
        let lvt = self.lvt[LVT_TIMER];
        if lvt & MASKED == 0 {
            self.request(lvt as u8);
        }
        let periodic = (lvt >> 17) & 3 == 1;
        let period = self.timer_initial as u64 * self.divisor();
        self.deadline = match periodic && period > 0 {
            // Missed periods collapse into one interrupt, as on hardware.
            true => Some(deadline + period * ((now - deadline) / period + 1)),
            false => None,
        };
    }

    fn current_count(&self, now: u64) -> u64 {
        match self.deadline {
            Some(d) if d > now => ((d - now) / self.divisor()).min(u32::MAX as u64),
            _ => 0,
        }
    }

    /// An x2APIC register read; `None` for a register that cannot be read,
    /// or any outside x2APIC mode (#GP).
    pub fn read(&self, msr: u32, now: u64) -> Option<u64> {
        if self.mode() != Mode::X2Apic {
            return None;
        }
        self.read_register(msr, now)
    }

    /// Register `msr` (x2APIC numbering), in either mode.
    fn read_register(&self, msr: u32, now: u64) -> Option<u64> {
        let word = |bits: &[u32; 8], i: u32| bits[(i & 7) as usize] as u64;
        Some(match msr {
            0x802 => self.id as u64,
            0x803 => VERSION,
            0x808 => self.tpr as u64,
            0x80A => self.ppr() as u64,
            0x80D => self.logical_id() as u64,
            0x80F => self.svr as u64,
            0x810..=0x817 => word(&self.isr, msr - 0x810),
            0x818..=0x81F => 0, // TMR: every interrupt here is edge-triggered
            0x820..=0x827 => word(&self.irr, msr - 0x820),
            0x828 => self.esr as u64,
            0x830 => self.icr,
            0x838 => self.timer_initial as u64,
            0x839 => self.current_count(now),
            0x83E => self.divide_config as u64,
            _ => self.lvt[lvt_index(msr)?] as u64,
        })
    }

    /// An x2APIC register write (#GP outside x2APIC mode).
    pub fn write(&mut self, msr: u32, value: u64, now: u64) -> Write {
        if self.mode() != Mode::X2Apic || (msr != 0x830 && value >> 32 != 0) {
            return Write::Fault;
        }
        if msr == 0x830 {
            return self.send(value);
        }
        self.write_register(msr, value as u32, now)
    }

    /// A read of the Hyper-V APIC MSRs (TLFS "Synthetic APIC MSRs",
    /// `HV_X64_MSR_EOI`/`ICR`/`TPR`, 0x40000070-0x40000072), offered with
    /// the APIC enabled in either mode: the ICR in the mode's layout (xAPIC:
    /// the destination in bits 63:56), the TPR. EOI is write-only (#GP).
    pub fn synthetic_read(&self, msr: u32) -> Option<u64> {
        match (msr, self.mode()) {
            (_, Mode::Disabled) | (SYNTHETIC_EOI, _) => None,
            (SYNTHETIC_ICR, Mode::XApic) => {
                Some(u64::from(self.icr_high) << 32 | self.icr & 0xFFFF_FFFF)
            }
            (SYNTHETIC_ICR, _) => Some(self.icr),
            (SYNTHETIC_TPR, _) => Some(self.tpr.into()),
            _ => None,
        }
    }

    /// A write of the Hyper-V APIC MSRs: EOI (any value) as the EOI
    /// register, the ICR as the mode's ICR (both halves at once), the TPR
    /// (bits 63:8 reserved: #GP).
    pub fn synthetic_write(&mut self, msr: u32, value: u64, now: u64) -> Write {
        match (msr, self.mode()) {
            (_, Mode::Disabled) => Write::Fault,
            (SYNTHETIC_EOI, _) => {
                self.eoi();
                Write::Done
            }
            (SYNTHETIC_ICR, Mode::XApic) => {
                self.icr_high = (value >> 32) as u32 & 0xFF00_0000;
                self.mmio_write(0x300, value as u32, now)
            }
            (SYNTHETIC_ICR, _) => self.send(value),
            (SYNTHETIC_TPR, _) if value <= 0xFF => {
                self.tpr = value as u32;
                Write::Done
            }
            _ => Write::Fault,
        }
    }

    /// The one vector in service when nothing else is (no other vector in
    /// service, none requested, no NMI waiting): its end may be left to
    /// the guest's VP assist page (TLFS "EOI assist": the hypervisor sets
    /// the "no EOI required" bit, the guest clears it instead of writing
    /// EOI, the hypervisor then ends the interrupt, [`Self::lazy_eoi`]).
    pub fn lazy_eoi_candidate(&self) -> Option<u8> {
        let v = self.isr_top?;
        let mut isr = self.isr;
        isr[v as usize / 32] &= !(1 << (v % 32));
        (self.irr_top.is_none() && !self.nmi && Self::highest(&isr).is_none()).then_some(v)
    }

    /// The guest took the "no EOI required" bit: the interrupt in service
    /// ends as at an EOI.
    pub fn lazy_eoi(&mut self) {
        self.eoi();
    }

    /// A 32-bit read of the xAPIC register page at `offset` (xAPIC mode;
    /// the caller checks). Unaligned, unknown and write-only registers
    /// read as 0.
    pub fn mmio_read(&self, offset: u32, now: u64) -> u32 {
        if offset & 0xF != 0 || offset >= 0x400 {
            return 0;
        }
        match 0x800 + (offset >> 4) {
            0x802 => self.id << 24,
            0x80D => self.xldr,
            0x80E => self.xdfr | 0x0FFF_FFFF,
            0x830 => self.icr as u32,
            0x831 => self.icr_high,
            0x83F => 0,
            msr => self.read_register(msr, now).unwrap_or(0) as u32,
        }
    }

    /// A 32-bit write of the xAPIC register page at `offset` (xAPIC mode;
    /// the caller checks). Writes to read-only and unknown registers, and
    /// to reserved bits, are ignored, as the register page does.
    pub fn mmio_write(&mut self, offset: u32, value: u32, now: u64) -> Write {
        if offset & 0xF != 0 || offset >= 0x400 {
            return Write::Done;
        }
        match 0x800 + (offset >> 4) {
            // Any value ends the interrupt in service.
            0x80B => self.eoi(),
            0x80D => self.xldr = value & 0xFF00_0000,
            0x80E => self.xdfr = value & 0xF000_0000,
            0x831 => self.icr_high = value & 0xFF00_0000,
            0x830 => {
                // Delivery status (12) is read-only; reserved bits ignored.
                let low = u64::from(value & 0x000C_CFFF);
                let field = (self.icr_high >> 24) as u8;
                let dest = match (low & (1 << 11) != 0, self.xdfr >> 28) {
                    (true, 0xF) => Dest::FlatLogical(field),
                    (true, _) => Dest::ClusterLogical(field),
                    (false, _) if field == 0xFF => Dest::Physical(u32::MAX),
                    (false, _) => Dest::Physical(u32::from(field)),
                };
                return self.command(low, dest);
            }
            // The ID and the x2APIC-only self IPI register.
            0x802 | 0x83F => {}
            // Nothing else asks for an IPI; a refused write is ignored.
            msr => {
                let _ = self.write_register(msr, value, now);
            }
        }
        Write::Done
    }

    /// Register `msr` (x2APIC numbering) written with `v32`, in either mode.
    fn write_register(&mut self, msr: u32, v32: u32, now: u64) -> Write {
        match msr {
            0x808 => self.tpr = v32 & 0xFF,
            0x80B if v32 == 0 => self.eoi(),
            0x80F => self.svr = v32 & 0x11FF,
            0x828 => self.esr = 0,
            0x838 => {
                self.timer_initial = v32;
                self.deadline = (v32 != 0).then(|| now + v32 as u64 * self.divisor());
            }
            0x83E => self.divide_config = v32 & 0xB,
            // Self IPI: a fixed interrupt to this VP.
            0x83F if v32 < 0x100 => {
                return Write::Ipi {
                    vector: v32 as u8,
                    dest: Dest::SelfOnly,
                }
            }
            _ => match lvt_index(msr) {
                Some(i) => {
                    // Vector, delivery mode (not for the timer), mask, timer mode.
                    let allowed = if i == LVT_TIMER {
                        0x3_00FF
                    } else if i == LVT_CMCI {
                        0x1_07FF
                    } else {
                        0x1_A7FF
                    };
                    self.lvt[i] = v32 & allowed;
                    if i == LVT_TIMER && (v32 >> 17) & 3 == 2 {
                        return Write::Fault; // TSC-deadline mode is not offered
                    }
                }
                None => return Write::Fault,
            },
        }
        Write::Done
    }

    fn send(&mut self, icr: u64) -> Write {
        // Reserved: bits 31:20, 17:16, 13, and delivery status (12) must be 0.
        if icr & 0xFFF3_3000 != 0 {
            return Write::Fault;
        }
        let dest = match icr & (1 << 11) != 0 {
            true => Dest::Logical((icr >> 32) as u32),
            false => Dest::Physical((icr >> 32) as u32),
        };
        self.command(icr, dest)
    }

    /// The IPI an ICR write asks for; `dest` unless a shorthand says
    /// otherwise.
    fn command(&mut self, icr: u64, dest: Dest) -> Write {
        self.icr = icr;
        let vector = icr as u8;
        let mode = ((icr >> 8) & 7) as u8;
        let dest = match (icr >> 18) & 3 {
            1 => Dest::SelfOnly,
            2 => Dest::AllIncludingSelf,
            3 => Dest::AllExcludingSelf,
            _ => dest,
        };
        match mode {
            0 => Write::Ipi { vector, dest },
            // NMI: the vector field is ignored.
            4 => Write::Nmi { dest },
            // INIT level de-assert (level 0, trigger level): no effect, as
            // on every processor since the Pentium 4.
            5 if icr & (1 << 14) == 0 && icr & (1 << 15) != 0 => Write::Done,
            5 => Write::Init { dest },
            6 => Write::Startup { vector, dest },
            _ => Write::Unsupported(mode),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enabled(id: u32) -> VirtualApic {
        let mut a = VirtualApic::new(id);
        assert_eq!(a.write(0x80F, 0x1FF, 0), Write::Done);
        a
    }

    #[test]
    fn the_hyper_v_apic_msrs_in_both_modes() {
        let mut a = enabled(0);
        a.request(0x40);
        a.accept(0x40);
        assert_eq!(a.synthetic_read(SYNTHETIC_EOI), None, "write-only");
        assert_eq!(a.synthetic_write(SYNTHETIC_EOI, 0, 0), Write::Done);
        assert_eq!(a.read(0x810 + 2, 0), Some(0), "ended");
        assert_eq!(a.synthetic_write(SYNTHETIC_TPR, 0x20, 0), Write::Done);
        assert_eq!(a.read(0x808, 0), Some(0x20));
        assert_eq!(a.synthetic_read(SYNTHETIC_TPR), Some(0x20));
        assert_eq!(a.synthetic_write(SYNTHETIC_TPR, 0x100, 0), Write::Fault);
        // x2APIC: the ICR as MSR 0x830 takes it.
        assert_eq!(
            a.synthetic_write(SYNTHETIC_ICR, 3 << 32 | 0x45, 0),
            Write::Ipi {
                vector: 0x45,
                dest: Dest::Physical(3)
            }
        );
        assert_eq!(a.synthetic_read(SYNTHETIC_ICR), Some(3 << 32 | 0x45));
        // xAPIC: the destination in bits 63:56, as the register page's.
        assert!(a.write_base(apic_base(0) & !BASE_EXTD & !BASE_EN));
        assert!(a.write_base(apic_base(0) & !BASE_EXTD));
        a.mmio_write(0xF0, 0x1FF, 0);
        assert_eq!(
            a.synthetic_write(SYNTHETIC_ICR, 2 << 56 | 0x46, 0),
            Write::Ipi {
                vector: 0x46,
                dest: Dest::Physical(2)
            }
        );
        assert_eq!(a.synthetic_read(SYNTHETIC_ICR), Some(2 << 56 | 0x46));
        assert_eq!(a.mmio_read(0x310, 0), 2 << 24);
        // Disabled: #GP.
        assert!(a.write_base(apic_base(0) & !BASE_EXTD & !BASE_EN));
        assert_eq!(a.synthetic_write(SYNTHETIC_EOI, 0, 0), Write::Fault);
        assert_eq!(a.synthetic_read(SYNTHETIC_TPR), None);
    }

    #[test]
    fn a_lone_interrupt_in_service_may_end_lazily() {
        let mut a = enabled(0);
        assert_eq!(a.lazy_eoi_candidate(), None, "nothing in service");
        a.request(0x50);
        a.accept(0x50);
        assert_eq!(a.lazy_eoi_candidate(), Some(0x50));
        // Another requested: its EOI must be seen (the TLFS's condition).
        a.request(0x30);
        assert_eq!(a.lazy_eoi_candidate(), None);
        a.request_nmi();
        a.write(0x80B, 0, 0);
        assert_eq!(a.lazy_eoi_candidate(), None, "an NMI waits");
        a.accept_nmi();
        a.accept(0x30);
        a.request(0x60);
        a.accept(0x60);
        // Nested: two in service.
        assert_eq!(a.lazy_eoi_candidate(), None);
        a.lazy_eoi();
        assert_eq!(a.lazy_eoi_candidate(), Some(0x30));
        a.lazy_eoi();
        assert_eq!(a.read(0x810 + 1, 0), Some(0));
        assert_eq!(a.lazy_eoi_candidate(), None);
    }

    #[test]
    fn cr8_is_the_tpr_class() {
        let mut a = enabled(0);
        a.request(0x30);
        assert!(a.set_cr8(3));
        assert_eq!((a.cr8(), a.read(0x808, 0)), (3, Some(0x30)));
        assert_eq!(a.deliverable(), None, "class 3 held back by CR8 3");
        assert!(!a.set_cr8(16), "reserved bits");
        assert_eq!(a.cr8(), 3);
        assert!(a.set_cr8(2));
        assert_eq!(a.deliverable(), Some(0x30));
    }

    #[test]
    fn identity_registers() {
        let a = VirtualApic::new(0x23);
        assert_eq!(a.read(0x802, 0), Some(0x23));
        assert_eq!(a.read(0x803, 0), Some(0x50014));
        assert_eq!(a.read(0x80D, 0), Some((2 << 16) | (1 << 3)));
        assert_eq!(a.read(0x801, 0), None);
        assert_eq!(
            VirtualApic::new(1).clone().write(0x802, 5, 0),
            Write::Fault,
            "the ID is read-only"
        );
    }

    #[test]
    fn priority_and_eoi() {
        let mut a = enabled(0);
        a.request(0x41);
        a.request(0x35);
        assert_eq!(a.deliverable(), Some(0x41));
        a.accept(0x41);
        // 0x35 is a lower class than 0x41 in service: it waits for the EOI.
        assert_eq!(a.deliverable(), None);
        assert_eq!(a.read(0x80A, 0), Some(0x40));
        assert_eq!(a.write(0x80B, 0, 0), Write::Done);
        assert_eq!(a.deliverable(), Some(0x35));
        // TPR masks classes at or below it.
        assert_eq!(a.write(0x808, 0x30, 0), Write::Done);
        assert_eq!(a.deliverable(), None);
        assert_eq!(a.write(0x80B, 1, 0), Write::Fault, "EOI takes only 0");
    }

    #[test]
    fn auto_eoi_vectors_are_never_in_service() {
        let mut a = enabled(0);
        let mut auto = [0u32; 8];
        auto[0x42 / 32] |= 1 << (0x42 % 32);
        a.set_auto_eoi(auto);
        a.request(0x42);
        a.accept(0x42);
        assert_eq!(a.read(0x80A, 0), Some(0), "no class in service");
        // The next SINT interrupt, and a lower vector, arrive without an EOI.
        a.request(0x42);
        a.request(0x35);
        assert_eq!(a.deliverable(), Some(0x42));
        a.accept(0x42);
        assert_eq!(a.deliverable(), Some(0x35));
        // Other vectors still wait for theirs.
        a.accept(0x35);
        a.request(0x34);
        assert_eq!(a.deliverable(), None);
    }

    #[test]
    fn disabled_apic_delivers_nothing_and_illegal_vectors_are_dropped() {
        let mut a = VirtualApic::new(0);
        a.request(0x50);
        assert_eq!(a.deliverable(), None);
        let mut b = enabled(0);
        b.request(3);
        assert_eq!(b.deliverable(), None);
        assert_eq!(b.read(0x828, 0), Some(1 << 6));
    }

    #[test]
    fn one_shot_and_periodic_timer() {
        let mut a = enabled(0);
        a.write(0x83E, 0xB, 0); // divide by 1
        a.write(0x832, 0x40, 0); // one-shot, vector 0x40
        a.write(0x838, 1000, 5000);
        assert_eq!(a.deadline(), Some(6000));
        assert_eq!(a.read(0x839, 5500), Some(500));
        a.tick(5999);
        assert_eq!(a.deliverable(), None);
        a.tick(6000);
        assert_eq!(a.deliverable(), Some(0x40));
        assert_eq!(a.deadline(), None);
        assert_eq!(a.read(0x839, 7000), Some(0));

        let mut p = enabled(0);
        p.write(0x83E, 0x3, 0); // divide by 16
        p.write(0x832, 0x2_0050, 0); // periodic, vector 0x50
        p.write(0x838, 10, 0);
        assert_eq!(p.deadline(), Some(160));
        p.tick(500); // three periods missed: one interrupt, next deadline after now
        assert_eq!(p.deliverable(), Some(0x50));
        assert_eq!(p.deadline(), Some(640));
        // Masked: the timer runs, nothing is requested.
        let mut m = enabled(0);
        m.write(0x832, 0x1_0060, 0);
        m.write(0x838, 1, 0);
        m.tick(10);
        assert_eq!(m.deliverable(), None);
        assert_eq!(
            m.write(0x832, 0x4_0060, 0),
            Write::Fault,
            "TSC-deadline mode"
        );
    }

    #[test]
    fn icr_decoding() {
        let mut a = enabled(2);
        assert_eq!(
            a.write(0x830, (5u64 << 32) | 0x41, 0),
            Write::Ipi {
                vector: 0x41,
                dest: Dest::Physical(5)
            }
        );
        assert_eq!(
            a.write(0x830, (3 << 18) | 0x42, 0),
            Write::Ipi {
                vector: 0x42,
                dest: Dest::AllExcludingSelf
            }
        );
        assert_eq!(
            a.write(0x830, (1 << 18) | 0x43, 0),
            Write::Ipi {
                vector: 0x43,
                dest: Dest::SelfOnly
            }
        );
        assert_eq!(
            a.write(0x830, (0x1_0004u64 << 32) | (1 << 11) | 0x44, 0),
            Write::Ipi {
                vector: 0x44,
                dest: Dest::Logical(0x1_0004)
            }
        );
        assert_eq!(
            a.write(0x830, (1 << 32) | 0x4500, 0),
            Write::Init {
                dest: Dest::Physical(1)
            },
            "INIT assert"
        );
        assert_eq!(
            a.write(0x830, (1 << 32) | 0x8500, 0),
            Write::Done,
            "INIT de-assert"
        );
        assert_eq!(
            a.write(0x830, (1 << 32) | 0x69A, 0),
            Write::Startup {
                vector: 0x9A,
                dest: Dest::Physical(1)
            },
            "SIPI"
        );
        assert_eq!(a.write(0x830, 0x200, 0), Write::Unsupported(2), "SMI");
        assert_eq!(
            a.write(0x830, (3 << 18) | 0x400 | 0x99, 0),
            Write::Nmi {
                dest: Dest::AllExcludingSelf
            },
            "NMI, vector ignored"
        );
        assert_eq!(
            a.write(0x830, 1 << 12, 0),
            Write::Fault,
            "delivery status is read-only"
        );
        assert_eq!(
            a.write(0x83F, 0x45, 0),
            Write::Ipi {
                vector: 0x45,
                dest: Dest::SelfOnly
            }
        );
        assert_eq!(a.write(0x83F, 0x145, 0), Write::Fault);
    }

    #[test]
    fn one_nmi_is_latched_even_with_the_apic_disabled() {
        let mut a = VirtualApic::new(1);
        assert!(!a.nmi_pending());
        a.request_nmi();
        a.request_nmi();
        assert!(a.nmi_pending(), "software-disabled APICs take NMIs");
        assert_eq!(a.deliverable(), None, "an NMI is not a vector");
        a.accept_nmi();
        assert!(!a.nmi_pending(), "two requests while pending are one NMI");
    }

    #[test]
    fn ipi_targets_and_the_base_msr() {
        let all: std::vec::Vec<u32> = ipi_targets(0..4, 1, Dest::AllExcludingSelf).collect();
        assert_eq!(all, [0, 2, 3]);
        let me: std::vec::Vec<u32> = ipi_targets(0..4, 1, Dest::SelfOnly).collect();
        assert_eq!(me, [1]);
        assert_eq!(ipi_targets(0..4, 1, Dest::Physical(7)).count(), 0);
        assert!(reaches(Dest::Physical(7), 0, 7));
        assert_eq!(apic_base(0), 0xFEE0_0D00);
        assert_eq!(apic_base(3), 0xFEE0_0C00);
        assert!(apic_base_write_ok(3, 0xFEE0_0D00), "the BSP bit is ignored");
        assert!(
            !apic_base_write_ok(0, 0xFEE0_0900),
            "the root's APIC stays in x2APIC mode"
        );
        assert!(!apic_base_write_ok(0, 0xFEC0_0D00), "the base stays");
    }

    #[test]
    fn destinations() {
        let a = VirtualApic::new(0x12);
        assert!(a.accepts(Dest::Physical(0x12), 0));
        assert!(a.accepts(Dest::Physical(u32::MAX), 0));
        assert!(!a.accepts(Dest::Physical(3), 0));
        assert!(a.accepts(Dest::Logical((1 << 16) | (1 << 2)), 0));
        assert!(!a.accepts(Dest::Logical((1 << 16) | (1 << 3)), 0));
        assert!(!a.accepts(Dest::AllExcludingSelf, 0x12));
        assert!(a.accepts(Dest::AllExcludingSelf, 0));
        assert!(a.accepts(Dest::SelfOnly, 0x12));
    }

    proptest::proptest! {
        /// Any sequence of register writes and ticks: no panic, whatever is
        /// deliverable was requested and outranks what is in service, and
        /// the kept highest IRR/ISR vectors match the bits.
        #[test]
        fn any_register_traffic(ops in proptest::collection::vec((0x800u32..0x900, proptest::prelude::any::<u64>(), 0u64..1_000_000), 0..64)) {
            let mut a = enabled(1);
            let mut now = 0;
            for (msr, value, dt) in ops {
                now += dt;
                let _ = a.write(msr, value, now);
                let _ = a.read(msr, now);
                a.tick(now);
                if let Some(v) = a.deliverable() {
                    proptest::prop_assert!(a.irr[v as usize / 32] & (1 << (v % 32)) != 0);
                    a.accept(v);
                }
                // The kept tops are the arrays' highest bits.
                proptest::prop_assert_eq!(a.irr_top, VirtualApic::highest(&a.irr));
                proptest::prop_assert_eq!(a.isr_top, VirtualApic::highest(&a.isr));
            }
        }

        /// Any mix of IA32_APIC_BASE writes, register-page accesses at any
        /// offset and MSR accesses, as a guest controls them: no panic, the
        /// mode is one the base bits allow, a refused base write changes
        /// nothing, the MSRs answer only in x2APIC mode, nothing is
        /// delivered by a disabled APIC, and the kept tops stay right.
        #[test]
        fn any_mode_and_page_traffic(ops in proptest::collection::vec((0u8..4, proptest::prelude::any::<u64>(), 0u32..0x1000, 0u64..100_000), 0..64)) {
            let mut a = VirtualApic::new(0);
            let mut now = 0;
            for (kind, value, offset, dt) in ops {
                now += dt;
                match kind {
                    0 => {
                        // Mostly plausible bases: the architectural one with
                        // random mode bits, sometimes anything.
                        let v = if value & 1 == 0 { APIC_PAGE | (value & 0xD00) } else { value };
                        let before = a.clone();
                        if !a.write_base(v) {
                            proptest::prop_assert_eq!(&a, &before);
                        }
                    }
                    1 => {
                        let _ = a.mmio_write(offset, value as u32, now);
                    }
                    2 => {
                        let _ = a.mmio_read(offset, now);
                    }
                    _ => {
                        let msr = 0x800 + (offset & 0xFF);
                        let w = a.write(msr, value & 0xFFFF_FFFF, now);
                        if a.mode() != Mode::X2Apic {
                            proptest::prop_assert_eq!(w, Write::Fault);
                            proptest::prop_assert_eq!(a.read(msr, now), None);
                        }
                    }
                }
                proptest::prop_assert!(a.base() & BASE_EXTD == 0 || a.base() & BASE_EN != 0);
                proptest::prop_assert_eq!(a.base() & !(BASE_EN | BASE_EXTD | BASE_BSP), APIC_PAGE);
                a.tick(now);
                if a.mode() == Mode::Disabled {
                    proptest::prop_assert_eq!(a.deliverable(), None);
                }
                if let Some(v) = a.deliverable() {
                    a.accept(v);
                }
                proptest::prop_assert_eq!(a.irr_top, VirtualApic::highest(&a.irr));
                proptest::prop_assert_eq!(a.isr_top, VirtualApic::highest(&a.isr));
            }
        }
    }

    #[test]
    fn apic_base_mode_switches_follow_the_sdm() {
        let mut a = VirtualApic::new(0);
        assert_eq!((a.mode(), a.base()), (Mode::X2Apic, 0xFEE0_0D00));
        assert!(!a.write_base(0xFEE0_0900), "x2APIC to xAPIC directly");
        assert!(!a.write_base(0xFEC0_0D00), "the base stays");
        assert!(!a.write_base(0xFEE0_0D01), "reserved bits");
        assert!(!a.write_base(0xFEE0_0500), "x2APIC bit without enable");
        assert_eq!(a.write(0x80F, 0x1FF, 0), Write::Done);
        a.request(0x40);
        assert!(a.write_base(0xFEE0_0000), "disabled, the BSP bit kept");
        assert_eq!((a.mode(), a.base()), (Mode::Disabled, 0xFEE0_0100));
        assert_eq!(a.read(0x80F, 0), None, "no MSRs while disabled");
        assert_eq!(a.write(0x80F, 0x1FF, 0), Write::Fault);
        assert!(!a.write_base(0xFEE0_0C00), "disabled to x2APIC directly");
        assert!(a.write_base(0xFEE0_0800));
        assert_eq!(a.mode(), Mode::XApic);
        assert_eq!(a.mmio_read(0xF0, 0), 0xFF, "disabling reset the SVR");
        assert_eq!(a.mmio_read(0x200, 0), 0, "and dropped the request");
        assert_eq!(a.read(0x802, 0), None, "no MSRs in xAPIC mode");
        assert!(a.write_base(0xFEE0_0C00), "xAPIC to x2APIC");
        assert_eq!(a.read(0x802, 0), Some(0));
    }

    fn xapic(id: u32) -> VirtualApic {
        let mut a = VirtualApic::new(id);
        assert!(a.write_base(APIC_PAGE) && a.write_base(APIC_PAGE | BASE_EN));
        assert_eq!(a.mmio_write(0xF0, 0x1FF, 0), Write::Done);
        a
    }

    #[test]
    fn the_xapic_register_page() {
        let mut a = xapic(3);
        assert_eq!(a.mmio_read(0x20, 0), 3 << 24, "the ID in bits 31:24");
        assert_eq!(a.mmio_write(0x20, 7 << 24, 0), Write::Done);
        assert_eq!(a.mmio_read(0x20, 0), 3 << 24, "kept");
        assert_eq!(a.mmio_read(0x30, 0), 0x0005_0014);
        assert_eq!(a.mmio_read(0xE0, 0), u32::MAX, "flat model at reset");
        a.mmio_write(0xD0, 0x0800_00FF, 0);
        assert_eq!(a.mmio_read(0xD0, 0), 0x0800_0000, "LDR bits 31:24");
        a.mmio_write(0x80, 0x20, 0);
        assert_eq!(a.mmio_read(0x80, 0), 0x20);
        a.request(0x51);
        assert_eq!(a.deliverable(), Some(0x51));
        a.accept(0x51);
        assert_eq!(a.mmio_read(0x100 + 0x10 * 2, 0), 1 << (0x51 - 64), "ISR");
        assert_eq!(a.mmio_write(0xB0, 0x1234, 0), Write::Done, "any EOI value");
        assert_eq!(a.mmio_read(0x100 + 0x10 * 2, 0), 0);
        // The timer: divide by 1, one-shot, 100 ticks.
        a.mmio_write(0x3E0, 0xB, 0);
        a.mmio_write(0x320, 0x45, 0);
        a.mmio_write(0x380, 100, 1000);
        assert_eq!(a.mmio_read(0x390, 1040), 60);
        a.tick(1100);
        assert_eq!(a.deliverable(), Some(0x45));
        assert_eq!(a.mmio_read(0x3, 0), 0, "unaligned");
        assert_eq!(a.mmio_read(0x400, 0), 0, "past the registers");
    }

    #[test]
    fn xapic_ipis_and_their_destinations() {
        let mut a = xapic(0);
        a.mmio_write(0x310, 0x0600_0000, 0);
        assert_eq!(a.mmio_read(0x310, 0), 0x0600_0000);
        assert_eq!(
            a.mmio_write(0x300, 0x0800 | 0x41, 0),
            Write::Ipi {
                vector: 0x41,
                dest: Dest::FlatLogical(6)
            }
        );
        assert!(reaches_xapic(Dest::FlatLogical(6), 0, 1, 0x0200_0000));
        assert!(!reaches_xapic(Dest::FlatLogical(6), 0, 1, 0x0100_0000));
        assert!(!reaches_xapic(Dest::FlatLogical(6), 0, 1, 0), "no LDR yet");
        a.mmio_write(0xE0, 0x0FFF_FFFF, 0);
        assert_eq!(
            a.mmio_write(0x300, 0x0800 | 0x42, 0),
            Write::Ipi {
                vector: 0x42,
                dest: Dest::ClusterLogical(6)
            },
            "cluster model"
        );
        assert!(reaches_xapic(Dest::ClusterLogical(0x12), 0, 1, 0x1200_0000));
        assert!(!reaches_xapic(
            Dest::ClusterLogical(0x22),
            0,
            1,
            0x1200_0000
        ));
        assert!(reaches_xapic(Dest::ClusterLogical(0xF2), 0, 1, 0x3200_0000));
        a.mmio_write(0x310, 0xFF00_0000, 0);
        assert_eq!(
            a.mmio_write(0x300, 0x4500 | 0x3000_0000 | 0x1000, 0),
            Write::Init {
                dest: Dest::Physical(u32::MAX)
            },
            "physical 0xFF is everyone; reserved and read-only bits ignored"
        );
        a.mmio_write(0x310, 0x0100_0000, 0);
        assert_eq!(
            a.mmio_write(0x300, 0x0600 | 0x09, 0),
            Write::Startup {
                vector: 9,
                dest: Dest::Physical(1)
            }
        );
        assert_eq!(
            a.mmio_write(0x300, 0x4_0000 | 0x50, 0),
            Write::Ipi {
                vector: 0x50,
                dest: Dest::SelfOnly
            }
        );
        assert_eq!(
            a.mmio_write(0x3F0, 0x50, 0),
            Write::Done,
            "no self-IPI register"
        );
    }
}
