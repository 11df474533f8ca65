//! Processor access: the small modules where `unsafe` lives.
pub mod apic;
pub mod cpu;
pub mod gdt;
pub mod idt;
pub mod msr;
pub mod port;
