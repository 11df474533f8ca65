//! The hypercall dispatch table and the checks every call passes before its
//! handler runs (TLFS "Hypercall Interface"): the input value, the caller's
//! privilege, the call's form (simple or rep, fast or memory), and the input
//! and output blocks' GPAs. Pure: the hypervisor supplies the registers and a
//! test of what memory the caller owns; handlers see only checked calls.
use hv_abi::hypercall::{self, status, Input};
use hv_abi::partition::{code, size};

/// Who may make a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Privilege {
    /// The root partition only; a guest gets ACCESS_DENIED.
    Root,
    /// Any partition.
    Any,
}

/// The caller's standing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    Root,
    Guest,
}

/// A call's parameter layout, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// One operation with a fixed input and output block.
    Simple { input: u64, output: u64, fast: bool },
    /// A fixed header, then `rep_count` elements in and/or out.
    Rep {
        header: u64,
        element_in: u64,
        element_out: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallSpec {
    pub code: u16,
    pub name: &'static str,
    pub privilege: Privilege,
    pub form: Form,
}

/// A root-only call with a fixed input and output (bytes), fast allowed
/// when the input fits two registers and there is no output.
const fn root_simple(code: u16, name: &'static str, input: u64, output: u64) -> CallSpec {
    CallSpec {
        code,
        name,
        privilege: Privilege::Root,
        form: Form::Simple {
            input,
            output,
            fast: input <= 16 && output == 0,
        },
    }
}

const fn root_rep(
    code: u16,
    name: &'static str,
    header: u64,
    element_in: u64,
    element_out: u64,
) -> CallSpec {
    CallSpec {
        code,
        name,
        privilege: Privilege::Root,
        form: Form::Rep {
            header,
            element_in,
            element_out,
        },
    }
}

/// Every call the hypervisor answers, sorted by code; anything else is
/// INVALID_HYPERCALL_CODE. The calls any partition may make: a guest names
/// only itself (HV_PARTITION_ID_SELF) and its own VP, and posts and signals
/// only on its own connections.
/// Sizes: hv_abi::partition::size, each the size of its typed layout in
/// hv_abi::layout (docs/hypercalls.md).
pub const TABLE: &[CallSpec] = &[
    CallSpec {
        code: code::FLUSH_VIRTUAL_ADDRESS_SPACE,
        name: "FlushVirtualAddressSpace",
        privilege: Privilege::Any,
        form: Form::Simple {
            input: size::FLUSH_HEADER,
            output: 0,
            fast: false,
        },
    },
    CallSpec {
        code: code::FLUSH_VIRTUAL_ADDRESS_LIST,
        name: "FlushVirtualAddressList",
        privilege: Privilege::Any,
        form: Form::Rep {
            header: size::FLUSH_HEADER,
            element_in: size::FLUSH_ELEMENT,
            element_out: 0,
        },
    },
    root_simple(
        code::CREATE_PARTITION,
        "CreatePartition",
        size::CREATE_PARTITION,
        size::PARTITION_ID,
    ),
    root_simple(
        code::INITIALIZE_PARTITION,
        "InitializePartition",
        size::PARTITION_ID,
        0,
    ),
    root_simple(
        code::FINALIZE_PARTITION,
        "FinalizePartition",
        size::PARTITION_ID,
        0,
    ),
    root_simple(
        code::DELETE_PARTITION,
        "DeletePartition",
        size::PARTITION_ID,
        0,
    ),
    root_simple(
        code::GET_PARTITION_PROPERTY,
        "GetPartitionProperty",
        size::GET_PROPERTY,
        size::PROPERTY_VALUE,
    ),
    root_simple(
        code::SET_PARTITION_PROPERTY,
        "SetPartitionProperty",
        size::SET_PROPERTY,
        0,
    ),
    root_rep(
        code::MAP_GPA_PAGES,
        "MapGpaPages",
        size::MAP_HEADER,
        size::MAP_ELEMENT,
        0,
    ),
    root_rep(
        code::UNMAP_GPA_PAGES,
        "UnmapGpaPages",
        size::MAP_HEADER,
        0,
        0,
    ),
    root_simple(
        code::INSTALL_INTERCEPT,
        "InstallIntercept",
        size::INSTALL_INTERCEPT,
        0,
    ),
    root_simple(code::CREATE_VP, "CreateVp", size::CREATE_VP, 0),
    root_simple(code::DELETE_VP, "DeleteVp", size::VP, 0),
    CallSpec {
        code: code::GET_VP_REGISTERS,
        name: "GetVpRegisters",
        privilege: Privilege::Any,
        form: Form::Rep {
            header: size::VP_REGISTERS_HEADER,
            element_in: size::REGISTER_NAME,
            element_out: size::REGISTER_VALUE,
        },
    },
    root_rep(
        code::SET_VP_REGISTERS,
        "SetVpRegisters",
        size::VP_REGISTERS_HEADER,
        size::REGISTER_ASSOC,
        0,
    ),
    root_simple(code::DELETE_PORT, "DeletePort", size::DELETE_PORT, 0),
    root_simple(
        code::DISCONNECT_PORT,
        "DisconnectPort",
        size::DISCONNECT_PORT,
        0,
    ),
    CallSpec {
        code: code::POST_MESSAGE,
        name: "PostMessage",
        privilege: Privilege::Any,
        form: Form::Simple {
            input: size::POST_MESSAGE,
            output: 0,
            fast: false,
        },
    },
    CallSpec {
        code: code::SIGNAL_EVENT,
        name: "SignalEvent",
        privilege: Privilege::Any,
        form: Form::Simple {
            input: size::SIGNAL_EVENT,
            output: 0,
            fast: true,
        },
    },
    root_simple(
        code::ASSERT_VIRTUAL_INTERRUPT,
        "AssertVirtualInterrupt",
        size::ASSERT_INTERRUPT,
        0,
    ),
    root_simple(code::CREATE_PORT, "CreatePort", size::CREATE_PORT, 0),
    root_simple(code::CONNECT_PORT, "ConnectPort", size::CONNECT_PORT, 0),
    root_simple(
        code::START_VIRTUAL_PROCESSOR,
        "StartVirtualProcessor",
        size::VP,
        0,
    ),
    root_simple(
        code::SIGNAL_EVENT_DIRECT,
        "SignalEventDirect",
        size::SIGNAL_EVENT_DIRECT,
        size::SIGNAL_EVENT_DIRECT_OUTPUT,
    ),
    root_simple(
        code::POST_MESSAGE_DIRECT,
        "PostMessageDirect",
        size::POST_MESSAGE_DIRECT,
        0,
    ),
    root_simple(hypercall::GET_HOST_INFO, "GetHostInfo", 0, 4096),
    root_simple(hypercall::GET_HOST_STATS, "GetHostStats", 0, 4096),
    root_simple(
        hypercall::GET_HOST_LOG,
        "GetHostLog",
        size::HOST_LOG_INPUT,
        4096,
    ),
    root_rep(
        hypercall::SET_VP_REGISTERS_THEN_IDLE,
        "SetVpRegistersThenIdle",
        size::VP_REGISTERS_HEADER,
        size::REGISTER_ASSOC,
        0,
    ),
    root_simple(
        hypercall::SIGNAL_EVENT_DIRECT_THEN_IDLE,
        "SignalEventDirectThenIdle",
        size::SIGNAL_EVENT_DIRECT,
        size::SIGNAL_EVENT_DIRECT_OUTPUT,
    ),
    // Register calls only (RDX, R8 and R9, R10): the handler refuses the
    // memory form.
    root_simple(hypercall::COMPLETE_INTERCEPT, "CompleteIntercept", 16, 0),
    root_simple(
        hypercall::COMPLETE_INTERCEPT_THEN_IDLE,
        "CompleteInterceptThenIdle",
        16,
        0,
    ),
];

/// A call that passed every check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checked {
    pub spec: &'static CallSpec,
    pub input: Input,
    /// The input block `[gpa, gpa + len)`, for memory calls with input.
    pub input_block: Option<(u64, u64)>,
    /// The output block, for calls with output.
    pub output_block: Option<(u64, u64)>,
}

const PAGE: u64 = 4096;

/// Checks one block: 8-byte aligned, within one page (INVALID_ALIGNMENT), and
/// memory the caller owns (INVALID_PARAMETER). A block in the last page of the
/// address space must end below 2^64 whatever `owns` says, so that block ends
/// (and the overlap test below) never wrap.
fn block(gpa: u64, len: u64, owns: &dyn Fn(u64, u64) -> bool) -> Result<(u64, u64), u16> {
    if !gpa.is_multiple_of(8) || gpa % PAGE + len > PAGE {
        return Err(status::INVALID_ALIGNMENT);
    }
    if gpa.checked_add(len).is_none() || !owns(gpa, len) {
        return Err(status::INVALID_PARAMETER);
    }
    Ok((gpa, len))
}

/// Checks a call from its registers (RCX input value, RDX input GPA, R8 output
/// GPA) against [`TABLE`]. `owns(gpa, len)` says whether the caller owns that memory.
pub fn check(
    rcx: u64,
    rdx: u64,
    r8: u64,
    caller: Caller,
    owns: &dyn Fn(u64, u64) -> bool,
) -> Result<Checked, u16> {
    check_spec(spec, rcx, rdx, r8, caller, owns)
}

/// Where each call's entry is in [`TABLE`], by code: the TLFS's codes
/// (below 0x100) and ours (0x7F00-0x7FFF); `NO_CALL` where there is none.
/// Built at compile time: a call is found by one index, not a search.
const INDEX_TLFS: [u8; 256] = index_from(0);
const INDEX_OURS: [u8; 256] = index_from(0x7F00);
const NO_CALL: u8 = u8::MAX;

const fn index_from(base: u16) -> [u8; 256] {
    let mut index = [NO_CALL; 256];
    let mut i = 0;
    while i < TABLE.len() {
        let code = TABLE[i].code;
        if code >= base && code - base < 256 {
            index[(code - base) as usize] = i as u8;
        }
        i += 1;
    }
    index
}

/// `TABLE`'s entry for `code`.
pub fn spec(code: u16) -> Option<&'static CallSpec> {
    let at = match code {
        0..=0xFF => INDEX_TLFS[usize::from(code)],
        0x7F00..=0x7FFF => INDEX_OURS[usize::from(code - 0x7F00)],
        _ => NO_CALL,
    };
    TABLE.get(usize::from(at))
}

/// As [`check`], against any table sorted by code.
pub fn check_in(
    table: &'static [CallSpec],
    rcx: u64,
    rdx: u64,
    r8: u64,
    caller: Caller,
    owns: &dyn Fn(u64, u64) -> bool,
) -> Result<Checked, u16> {
    let find = |code| {
        table
            .binary_search_by_key(&code, |s: &CallSpec| s.code)
            .ok()
            .and_then(|i| table.get(i))
    };
    check_spec(find, rcx, rdx, r8, caller, owns)
}

/// The checks, with `find` naming a code's entry.
fn check_spec(
    find: impl Fn(u16) -> Option<&'static CallSpec>,
    rcx: u64,
    rdx: u64,
    r8: u64,
    caller: Caller,
    owns: &dyn Fn(u64, u64) -> bool,
) -> Result<Checked, u16> {
    let input = Input::decode(rcx).ok_or(status::INVALID_HYPERCALL_INPUT)?;
    let spec = find(input.code).ok_or(status::INVALID_HYPERCALL_CODE)?;
    if spec.privilege == Privilege::Root && caller != Caller::Root {
        return Err(status::ACCESS_DENIED);
    }
    let var_header = input.variable_header_size as u64 * 8;
    let (in_len, out_len) = match spec.form {
        Form::Simple {
            input: i,
            output: o,
            fast,
        } => {
            if input.rep_count != 0 || input.rep_start != 0 {
                return Err(status::INVALID_HYPERCALL_INPUT);
            }
            if input.fast && !fast {
                return Err(status::INVALID_HYPERCALL_INPUT);
            }
            (i + var_header, o)
        }
        Form::Rep {
            header,
            element_in,
            element_out,
        } => {
            if input.fast || input.rep_count == 0 || input.rep_start >= input.rep_count {
                return Err(status::INVALID_HYPERCALL_INPUT);
            }
            let reps = input.rep_count as u64;
            (header + var_header + reps * element_in, reps * element_out)
        }
    };
    if input.fast {
        // Register calls: up to two input quadwords, no memory.
        if in_len > 16 || out_len != 0 {
            return Err(status::INVALID_HYPERCALL_INPUT);
        }
        return Ok(Checked {
            spec,
            input,
            input_block: None,
            output_block: None,
        });
    }
    let input_block = if in_len > 0 {
        Some(block(rdx, in_len, owns)?)
    } else {
        None
    };
    let output_block = if out_len > 0 {
        Some(block(r8, out_len, owns)?)
    } else {
        None
    };
    if let (Some((i, il)), Some((o, ol))) = (input_block, output_block) {
        if i < o + ol && o < i + il {
            return Err(status::INVALID_PARAMETER);
        }
    }
    Ok(Checked {
        spec,
        input,
        input_block,
        output_block,
    })
}

/// GetVpRegisters' elements `reps` of `input`, each register's value from
/// `value` (an error status stops there), written to `output`. The root's
/// call for any VP and a guest's for itself share this. `Err((status, rep))`
/// names the rep that failed; the ones before it are written.
pub fn get_vp_registers(
    input: &[u8],
    output: &mut [u8],
    reps: core::ops::Range<u16>,
    mut value: impl FnMut(u32) -> Result<u128, u16>,
) -> Result<(), (u16, u16)> {
    use hv_abi::layout::{self, GetVpRegisters, RegisterName, RegisterValue};
    for i in reps {
        let Some(RegisterName { name }) = layout::element::<GetVpRegisters, _>(input, i) else {
            return Err((status::INVALID_PARAMETER, i));
        };
        let value = value(name).map_err(|s| (s, i))?;
        if layout::write_element(output, i, &RegisterValue { value }).is_none() {
            return Err((status::INVALID_PARAMETER, i));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_table_is_sorted_by_code_without_repeats() {
        assert!(super::TABLE.windows(2).all(|w| w[0].code < w[1].code));
        // The index names every entry, and nothing else: each code finds
        // what a bisection of the table finds.
        assert!(super::TABLE.len() < usize::from(super::NO_CALL));
        for code in 0..=u16::MAX {
            let bisected = super::TABLE
                .binary_search_by_key(&code, |s| s.code)
                .ok()
                .map(|i| &super::TABLE[i]);
            assert_eq!(super::spec(code), bisected, "code {code:#x}");
        }
    }

    use super::*;

    #[test]
    fn get_vp_registers_reads_each_element_and_stops_at_a_bad_one() {
        use hv_abi::layout::{encode_rep, GetVpRegisters, RegisterName};
        let names = [
            RegisterName { name: 1 },
            RegisterName { name: 7 },
            RegisterName { name: 2 },
        ];
        let mut input = [0u8; 64];
        let len = encode_rep(&GetVpRegisters::default(), &names, &mut input).unwrap();
        let mut out = [0u8; 48];
        let value = |n: u32| {
            if n == 7 {
                Err(status::INVALID_PARAMETER)
            } else {
                Ok(n as u128 * 10)
            }
        };
        assert_eq!(
            get_vp_registers(&input[..len], &mut out, 0..3, value),
            Err((status::INVALID_PARAMETER, 1))
        );
        assert_eq!(u128::from_le_bytes(out[..16].try_into().unwrap()), 10);
        assert_eq!(
            get_vp_registers(&input[..len], &mut out, 2..3, value),
            Ok(())
        );
        assert_eq!(u128::from_le_bytes(out[32..48].try_into().unwrap()), 20);
        assert_eq!(
            get_vp_registers(&input[..len], &mut out, 3..4, value),
            Err((status::INVALID_PARAMETER, 3)),
            "past the block"
        );
    }

    /// Calls of every form, for the rules `TABLE` does not exercise yet.
    const FORMS: &[CallSpec] = &[
        CallSpec {
            code: 1,
            name: "Memory",
            privilege: Privilege::Any,
            form: Form::Simple {
                input: 24,
                output: 16,
                fast: true,
            },
        },
        CallSpec {
            code: 2,
            name: "Rep",
            privilege: Privilege::Any,
            form: Form::Rep {
                header: 16,
                element_in: 8,
                element_out: 8,
            },
        },
        CallSpec {
            code: 3,
            name: "NoFast",
            privilege: Privilege::Root,
            form: Form::Simple {
                input: 8,
                output: 0,
                fast: false,
            },
        },
    ];

    fn rcx(code: u16, fast: bool, reps: u16, start: u16) -> u64 {
        Input {
            code,
            fast,
            variable_header_size: 0,
            rep_count: reps,
            rep_start: start,
        }
        .encode()
    }

    /// Memory the caller owns: 1 MiB at 16 MiB.
    fn owns(gpa: u64, len: u64) -> bool {
        gpa >= 0x100_0000 && gpa.checked_add(len).is_some_and(|e| e <= 0x110_0000)
    }

    #[test]
    fn root_calls_are_denied_to_guests() {
        let r = rcx(hypercall::GET_HOST_INFO, false, 0, 0);
        assert!(check(r, 0, 0x100_0000, Caller::Root, &owns).is_ok());
        assert_eq!(
            check(r, 0, 0x100_0000, Caller::Guest, &owns),
            Err(status::ACCESS_DENIED)
        );
        assert_eq!(
            check(rcx(0x7E00, false, 0, 0), 0, 0, Caller::Root, &owns),
            Err(status::INVALID_HYPERCALL_CODE)
        );
        assert_eq!(
            check(1 << 63, 0, 0, Caller::Root, &owns),
            Err(status::INVALID_HYPERCALL_INPUT)
        );
    }

    /// Our own calls (0x7F00 on) manage the host or halt the caller: the
    /// root's alone.
    #[test]
    fn the_hypervisor_calls_are_root_only() {
        let ours: Vec<_> = TABLE.iter().filter(|s| s.code >= 0x7F00).collect();
        assert!(ours.len() >= 5);
        for spec in ours {
            assert_eq!(spec.privilege, Privilege::Root, "{}", spec.name);
        }
    }

    #[test]
    fn output_blocks_are_checked() {
        let r = rcx(hypercall::GET_HOST_INFO, false, 0, 0);
        assert_eq!(
            check(r, 0, 0x100_0008, Caller::Root, &owns),
            Err(status::INVALID_ALIGNMENT),
            "a page-sized block must start a page"
        );
        assert_eq!(
            check(r, 0, 0x100_0004, Caller::Root, &owns),
            Err(status::INVALID_ALIGNMENT)
        );
        assert_eq!(
            check(r, 0, 0x20_0000, Caller::Root, &owns),
            Err(status::INVALID_PARAMETER),
            "not the caller's memory"
        );
        assert_eq!(
            check(r, 0, !0xFFF, Caller::Root, &owns),
            Err(status::INVALID_PARAMETER)
        );
        assert_eq!(
            check(
                rcx(hypercall::GET_HOST_INFO, true, 0, 0),
                0,
                0,
                Caller::Root,
                &owns
            ),
            Err(status::INVALID_HYPERCALL_INPUT),
            "fast"
        );
        assert_eq!(
            check(
                rcx(hypercall::GET_HOST_INFO, false, 3, 0),
                0,
                0x100_0000,
                Caller::Root,
                &owns
            ),
            Err(status::INVALID_HYPERCALL_INPUT),
            "reps on a simple call"
        );
    }

    #[test]
    fn blocks_may_not_cross_pages_or_overlap() {
        let c = |r, rdx, r8| check_in(FORMS, r, rdx, r8, Caller::Guest, &owns);
        let mem = rcx(1, false, 0, 0);
        let ok = c(mem, 0x100_0000, 0x100_0100).unwrap();
        assert_eq!(
            (ok.input_block, ok.output_block),
            (Some((0x100_0000, 24)), Some((0x100_0100, 16)))
        );
        assert_eq!(
            c(mem, 0x100_0FF0, 0x100_2000),
            Err(status::INVALID_ALIGNMENT),
            "input crosses a page"
        );
        assert_eq!(
            c(mem, 0x100_0000, 0x100_0FF8),
            Err(status::INVALID_ALIGNMENT),
            "output crosses a page"
        );
        assert_eq!(
            c(mem, 0x100_0000, 0x100_0010),
            Err(status::INVALID_PARAMETER),
            "overlap"
        );
        assert_eq!(
            c(mem, 0x100_0003, 0x100_0100),
            Err(status::INVALID_ALIGNMENT)
        );
        // Fast: registers only, at most 16 bytes in and nothing out.
        assert_eq!(
            c(rcx(1, true, 0, 0), 0, 0),
            Err(status::INVALID_HYPERCALL_INPUT),
            "24 bytes of input cannot go in registers"
        );
        assert_eq!(
            check_in(FORMS, rcx(3, true, 0, 0), 0, 0, Caller::Root, &owns),
            Err(status::INVALID_HYPERCALL_INPUT),
            "not a fast call"
        );
        assert_eq!(
            check_in(
                FORMS,
                rcx(3, false, 0, 0),
                0x100_0000,
                0,
                Caller::Guest,
                &owns
            ),
            Err(status::ACCESS_DENIED)
        );
    }

    #[test]
    fn rep_calls() {
        let c = |r, rdx, r8| check_in(FORMS, r, rdx, r8, Caller::Guest, &owns);
        let ok = c(rcx(2, false, 10, 0), 0x100_0000, 0x100_1000).unwrap();
        assert_eq!(
            (ok.input_block, ok.output_block),
            (Some((0x100_0000, 16 + 80)), Some((0x100_1000, 80)))
        );
        assert_eq!(
            c(rcx(2, false, 0, 0), 0x100_0000, 0x100_1000),
            Err(status::INVALID_HYPERCALL_INPUT),
            "no reps"
        );
        assert_eq!(
            c(rcx(2, false, 10, 10), 0x100_0000, 0x100_1000),
            Err(status::INVALID_HYPERCALL_INPUT),
            "start past the count"
        );
        // 4095 reps of 8 bytes do not fit one page: the list would cross it.
        assert_eq!(
            c(rcx(2, false, 4095, 0), 0x100_0000, 0x100_2000),
            Err(status::INVALID_ALIGNMENT)
        );
        assert_eq!(
            c(rcx(2, true, 1, 0), 0, 0),
            Err(status::INVALID_HYPERCALL_INPUT),
            "rep calls are memory calls"
        );
    }

    /// Found by the hypercall_input fuzz target: with an `owns` that accepts
    /// the last page of the address space, a block ending at 2^64 passed and
    /// the overlap test of two such blocks overflowed.
    #[test]
    fn blocks_end_below_the_top_of_the_address_space() {
        let everything = |_: u64, _: u64| true;
        let top = u64::MAX - 4095;
        let get_info = rcx(hypercall::GET_HOST_INFO, false, 0, 0);
        assert_eq!(
            check(get_info, 0, top, Caller::Root, &everything),
            Err(status::INVALID_PARAMETER)
        );
        assert_eq!(
            check_in(
                FORMS,
                rcx(1, false, 0, 0),
                top,
                u64::MAX - 15,
                Caller::Root,
                &everything
            ),
            Err(status::INVALID_PARAMETER)
        );
        let ok = check_in(
            FORMS,
            rcx(1, false, 0, 0),
            top,
            top + 24,
            Caller::Root,
            &everything,
        )
        .unwrap();
        assert_eq!(ok.input_block, Some((top, 24)));
    }

    proptest::proptest! {
        /// Whatever registers a partition passes: no panic; success only for a
        /// call in the table, allowed to the caller, with blocks it owns.
        #[test]
        fn any_registers(rcx in proptest::prelude::any::<u64>(), rdx in proptest::prelude::any::<u64>(), r8 in proptest::prelude::any::<u64>(), root in proptest::prelude::any::<bool>()) {
            let caller = if root { Caller::Root } else { Caller::Guest };
            let _ = check(rcx, rdx, r8, caller, &owns);
            // The code field takes every form's code often enough: 0..4.
            let rcx = (rcx & !0xFFFF) | (rcx & 3);
            if let Ok(c) = check_in(FORMS, rcx, rdx, r8, caller, &owns) {
                proptest::prop_assert!(FORMS.iter().any(|s| s.code == c.spec.code));
                proptest::prop_assert!(c.spec.privilege == Privilege::Any || caller == Caller::Root);
                for (gpa, len) in c.input_block.into_iter().chain(c.output_block) {
                    proptest::prop_assert!(owns(gpa, len) && gpa % 8 == 0 && gpa % PAGE + len <= PAGE);
                }
            }
        }
    }
}
