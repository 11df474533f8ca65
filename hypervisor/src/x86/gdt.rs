//! Per-processor GDT and TSS. The TSS holds the interrupt stacks (IST) that
//! NMI, double fault and machine check switch to, so a corrupt or overflowed
//! stack still gets a report instead of a triple fault.
use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

/// IST slots (1-based in the IDT, 0-based in the TSS array).
pub const IST_NMI: u8 = 1;
pub const IST_DOUBLE_FAULT: u8 = 2;
pub const IST_MACHINE_CHECK: u8 = 3;

pub const KERNEL_CODE: u16 = 0x08;
pub const KERNEL_DATA: u16 = 0x10;

pub struct CpuTables {
    gdt: GlobalDescriptorTable,
    tss: TaskStateSegment,
}

impl CpuTables {
    pub const fn new() -> Self {
        Self {
            gdt: GlobalDescriptorTable::new(),
            tss: TaskStateSegment::new(),
        }
    }

    /// Points IST slot `slot` (1-based) at the top of a stack. Takes effect at
    /// the next exception that uses the slot.
    pub fn set_ist(&mut self, slot: u8, stack_top: u64) {
        self.tss.interrupt_stack_table[slot as usize - 1] = VirtAddr::new(stack_top);
    }

    /// The TSS's address (the VMCS host state names it).
    pub fn tss_address(&self) -> u64 {
        core::ptr::addr_of!(self.tss) as u64
    }

    /// Builds the GDT (null, code 0x08, data 0x10, TSS 0x18) and loads it, the
    /// segment registers and the task register on this processor.
    pub fn load(&'static mut self) {
        let tss: &'static TaskStateSegment =
            // SAFETY: the TSS lives as long as the tables ('static) and is only
            // changed through `set_ist`, which writes whole aligned u64 fields.
            unsafe { &*core::ptr::addr_of!(self.tss) };
        let code = self.gdt.append(Descriptor::kernel_code_segment());
        let data = self.gdt.append(Descriptor::kernel_data_segment());
        let tss_sel = self.gdt.append(Descriptor::tss_segment(tss));
        debug_assert_eq!(code.0, KERNEL_CODE);
        let gdt: &'static GlobalDescriptorTable = &self.gdt;
        gdt.load();
        // SAFETY: the selectors index descriptors of the GDT just loaded.
        unsafe {
            CS::set_reg(code);
            DS::set_reg(data);
            ES::set_reg(data);
            SS::set_reg(data);
            load_tss(tss_sel);
        }
        let _: SegmentSelector = tss_sel;
    }
}

impl Default for CpuTables {
    fn default() -> Self {
        Self::new()
    }
}
