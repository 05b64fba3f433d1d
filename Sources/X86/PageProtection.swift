// What the guest's CPUID lets paging do, and the protections that depend
// on it: the reserved bits of paging-structure entries (MAXPHYADDR from
// leaf 0x80000008, 1 GiB pages, PSE-36), SMEP and SMAP with STAC/CLAC.
// As in KVM, the guest's CPUID (KVM_SET_CPUID2) decides: a feature it does
// not show is reserved for the guest even where the CPU has it.

/// The CPUID-derived facts the page walk and the CR4 checks use, computed
/// once when the CPUID is set rather than searched for on each walk.
struct GuestFeatures {
    /// MAXPHYADDR: 36 without leaf 0x80000008, as KVM's cpuid_query_maxphyaddr says.
    var physicalAddressBits: UInt64 = 36
    /// CPUID 80000001:EDX.Page1GB: PS in a PDPTE maps 1 GiB; without it PS there is reserved.
    var gigabytePages = false
    /// CPUID 1:EDX.PSE-36: a 4 MiB page's PDE bits 13 and up extend its address.
    var pse36 = false
    /// CPUID 7:EBX.SMEP and SMAP: the CR4 bits exist (else #GP), and STAC/CLAC (else #UD).
    var smep = false
    var smap = false
    /// Whether a CPUID was given: before KVM_SET_CPUID2, KVM reserves no
    /// CR4 bit for want of a CPUID feature (cr4_guest_rsvd_bits is set with the CPUID).
    var hasCPUID = false

    /// Bits MAXPHYADDR...51 (4-level paging) or ...62 (PAE paging), reserved in every entry.
    var reservedLong: UInt64 = 0
    var reservedPAE: UInt64 = 0
    /// The PDE bits of a 4 MiB page in 32-bit paging that are reserved (13-21 without PSE-36).
    var reservedLargePDE32: UInt64 = 0x3F_E000

    init() { derive() }

    init(_ leaves: [CPUIDLeaf]) {
        hasCPUID = !leaves.isEmpty
        func leaf(_ function: UInt32, _ index: UInt32 = 0) -> CPUIDLeaf? {
            leaves.first { $0.function == function && (!$0.significantIndex || $0.index == index) }
        }
        if let top = leaf(0x8000_0000), top.eax >= 0x8000_0008, let sizes = leaf(0x8000_0008) {
            physicalAddressBits = UInt64(sizes.eax & 0xFF)
        }
        // Feature bits are looked up as KVM's guest_cpuid_has does: the leaf
        // itself, whatever the maximum leaf says.
        if let extended = leaf(0x8000_0001) { gigabytePages = extended.edx & (1 << 26) != 0 }
        if let basic = leaf(1) { pse36 = basic.edx & (1 << 17) != 0 }
        if let structured = leaf(7, 0) {
            smep = structured.ebx & (1 << 7) != 0
            smap = structured.ebx & (1 << 20) != 0
        }
        derive()
    }

    mutating func derive() {
        // A CPUID claiming more than 52 bits (or fewer than 32) cannot be paged with: clamp it.
        let bits = min(max(physicalAddressBits, 32), 52)
        physicalAddressBits = bits
        let above: UInt64 = ~((1 << bits) - 1)
        reservedLong = above & ((1 << 52) - 1)
        reservedPAE = above & ((1 << 63) - 1)
        if pse36 {
            // PDE bits 13...(M-20) hold address bits 32...(M-1), M at most 40; the rest up to 21 are reserved.
            let addressBits = min(bits, 40) - 32
            reservedLargePDE32 = 0x3F_E000 & ~(((1 << addressBits) - 1) << 13)
        } else {
            reservedLargePDE32 = 0x3F_E000
        }
    }

    /// The CR4 bits that exist only when the CPUID shows their feature (all
    /// of them while there is no CPUID).
    var cr4FeatureBits: UInt64 {
        (smep || !hasCPUID ? ControlBits.cr4SMEP : 0) | (smap || !hasCPUID ? ControlBits.cr4SMAP : 0)
    }
}

extension ControlBits {
    public static let cr4SMEP: UInt64 = 1 << 20
    public static let cr4SMAP: UInt64 = 1 << 21
}

/// Page-fault error code bits.
enum PageFaultCode {
    static let present: UInt32 = 1
    static let write: UInt32 = 2
    static let user: UInt32 = 4
    static let reserved: UInt32 = 8
    static let fetch: UInt32 = 0x10
}

extension X86CPU {
    /// SMEP and SMAP for a supervisor-mode access to a user-mode address
    /// (U/S set at every level): false when they forbid it. SMEP forbids
    /// fetches; SMAP forbids data accesses that are implicit (system
    /// tables) or made with EFLAGS.AC clear.
    @inline(__always)
    mutating func supervisorMayAccessUserPage(_ access: Access) -> Bool {
        let cr4 = state.cr4
        if access == .fetch { return cr4 & ControlBits.cr4SMEP == 0 }
        if cr4 & ControlBits.cr4SMAP == 0 { return true }
        return !systemTableAccess && state.flags.bits & RFLAGS.ac != 0
    }

    /// 0F 01 CA CLAC, 0F 01 CB STAC: clear or set EFLAGS.AC. #UD without
    /// SMAP in the CPUID, or above CPL 0 (virtual-8086 mode included).
    mutating func executeSMAPFlag(_ insn: inout Instruction) -> Bool {
        guard guestFeatures.smap, state.privilegeLevel() == 0 else { return undefined() }
        if insn.rm & 7 == 3 {
            state.flags.bits |= RFLAGS.ac
        } else {
            state.flags.bits &= ~RFLAGS.ac
        }
        state.rip = insn.nextRIP
        return true
    }
}
