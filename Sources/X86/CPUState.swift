// The architectural state of one x86-64 CPU as a value type. Everything the
// step loop touches is stored inline (no references), so that a copy of the
// state is a snapshot and the loop never pays for reference counting.

/// A general-purpose register, numbered as ModRM and REX encode it.
public enum GPR: Int, CaseIterable, Sendable {
    case rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8, r9, r10, r11, r12, r13, r14, r15
}

/// A segment register, numbered as the ModRM reg field of `mov Sreg` encodes it.
public enum SegmentRegisterName: Int, CaseIterable, Sendable {
    case es, cs, ss, ds, fs, gs
}

/// A segment register: the selector and the hidden descriptor cache that
/// loading it fills.
public struct SegmentRegister: Hashable, Sendable {
    public var selector: UInt16
    public var base: UInt64
    public var limit: UInt32
    /// The descriptor's attributes packed as VMX access rights: type in bits
    /// 0-3, S 4, DPL 5-6, P 7, AVL 12, L 13, D/B 14, G 15.
    public var attributes: UInt16

    public init(selector: UInt16 = 0, base: UInt64 = 0, limit: UInt32 = 0xFFFF, attributes: UInt16 = 0x93) {
        self.selector = selector
        self.base = base
        self.limit = limit
        self.attributes = attributes
    }

    public var dpl: UInt8 { UInt8(truncatingIfNeeded: (attributes >> 5) & 3) }
    public var isPresent: Bool { attributes & 0x80 != 0 }
    /// L: a 64-bit code segment.
    public var isLong: Bool { attributes & 0x2000 != 0 }
    /// D/B: 32-bit default operand size (code) or stack pointer (stack).
    public var isDefaultBig: Bool { attributes & 0x4000 != 0 }

    /// The hidden state real mode gives a selector: base = selector * 16, 64 KiB limit.
    public static func realMode(selector: UInt16, code: Bool = false) -> SegmentRegister {
        SegmentRegister(selector: selector, base: UInt64(selector) << 4, limit: 0xFFFF,
                        attributes: code ? 0x9B : 0x93)
    }
}

/// GDTR or IDTR.
public struct DescriptorTableRegister: Hashable, Sendable {
    public var base: UInt64 = 0
    public var limit: UInt16 = 0xFFFF
    public init(base: UInt64 = 0, limit: UInt16 = 0xFFFF) {
        self.base = base
        self.limit = limit
    }
}

/// The execution mode, derived from CR0.PE, EFER.LMA and the CS descriptor.
public enum CPUMode: Sendable, Equatable {
    case real
    case protected16
    case protected32
    /// Long mode, compatibility submode, with the CS default operand size (2 or 4 bytes).
    case compatibility16
    case compatibility32
    case long64
}

/// Control-register and EFER bits the CPU acts on.
public enum ControlBits {
    public static let cr0PE: UInt64 = 1 << 0
    public static let cr0ET: UInt64 = 1 << 4
    public static let cr0NW: UInt64 = 1 << 29
    public static let cr0CD: UInt64 = 1 << 30
    public static let cr0WP: UInt64 = 1 << 16
    public static let cr0PG: UInt64 = 1 << 31
    public static let cr0MP: UInt64 = 1 << 1
    public static let cr0EM: UInt64 = 1 << 2
    public static let cr0TS: UInt64 = 1 << 3
    public static let cr4VME: UInt64 = 1 << 0
    public static let cr4PVI: UInt64 = 1 << 1
    public static let cr4TSD: UInt64 = 1 << 2
    public static let cr4DE: UInt64 = 1 << 3
    public static let cr4PSE: UInt64 = 1 << 4
    public static let cr4PAE: UInt64 = 1 << 5
    public static let cr4PGE: UInt64 = 1 << 7
    public static let eferSCE: UInt64 = 1 << 0
    public static let eferLME: UInt64 = 1 << 8
    public static let eferLMA: UInt64 = 1 << 10
    public static let eferNXE: UInt64 = 1 << 11
}

public struct CPUState {
    public var gpr: InlineArray<16, UInt64>
    public var rip: UInt64
    var flags: LazyFlags
    // Six named fields rather than an InlineArray: reading one element of an
    // InlineArray property copied the whole array (measured: a third of the
    // step time went to memmove).
    public var es: SegmentRegister
    public var cs: SegmentRegister { didSet { mode = CPUState.mode(cr0: cr0, efer: efer, cs: cs) } }
    public var ss: SegmentRegister
    public var ds: SegmentRegister
    public var fs: SegmentRegister
    public var gs: SegmentRegister
    public var cr0: UInt64 {
        didSet {
            mode = CPUState.mode(cr0: cr0, efer: efer, cs: cs)
            flushAllTranslations()
        }
    }
    public var cr2: UInt64
    /// A write flushes the TLB but for global pages (CR4.PGE).
    public var cr3: UInt64 {
        didSet {
            pagingGeneration &+= 1
            pdptesLoaded = false
        }
    }
    public var cr4: UInt64 { didSet { flushAllTranslations() } }
    public var efer: UInt64 {
        didSet {
            mode = CPUState.mode(cr0: cr0, efer: efer, cs: cs)
            flushAllTranslations()
        }
    }
    /// Bumped by every write to CR0, CR3, CR4 or EFER: the CPU's TLB is
    /// flushed when it sees a new value (as a MOV to CR3 flushes a real
    /// TLB), global pages included when `fullFlushGeneration` moved too.
    public private(set) var pagingGeneration: UInt64 = 0
    /// Bumped by writes to CR0, CR4 and EFER, which flush global pages too.
    public private(set) var fullFlushGeneration: UInt64 = 0

    mutating func flushAllTranslations() {
        pagingGeneration &+= 1
        fullFlushGeneration &+= 1
        pdptesLoaded = false
    }

    /// Derived from CR0.PE, EFER.LMA and CS whenever one of them is set, so
    /// that the step loop reads one byte instead of deriving it per access.
    public private(set) var mode: CPUMode
    public var gdtr: DescriptorTableRegister
    public var idtr: DescriptorTableRegister
    /// The task register: the TSS selector and its cached descriptor
    /// (type 0xB, a busy 32-bit or 64-bit TSS, once LTR loaded it).
    public var tr = SegmentRegister(selector: 0, base: 0, limit: 0xFFFF, attributes: 0x8B)
    /// The LDT register (type 2), unusable (attributes 0) after LLDT with a null selector.
    public var ldtr = SegmentRegister(selector: 0, base: 0, limit: 0xFFFF, attributes: 0x82)
    /// The four PAE PDPTEs, loaded from CR3's table when PAE paging is
    /// entered or CR3 written (as the CPU caches them); `pdptesLoaded`
    /// false makes the next walk load them (state set from outside).
    public var pdptes: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
    public var pdptesLoaded = false
    /// The MSRs that are plain storage (EFER and the FS/GS bases live above).
    public var msrs = ModelSpecificRegisters()
    /// DR0-DR3, DR6, DR7 (Debug.swift).
    public var debugRegisters = DebugRegisterFile()
    /// x87, MMX and SSE registers (FloatingPointState.swift).
    public var fpu = FloatingPointState.powerOn

    /// The state after RESET (Intel SDM Vol. 3 table 10-1): real mode,
    /// CS:IP = F000:FFF0 with CS base FFFF0000.
    public init() {
        gpr = InlineArray(repeating: 0)
        rip = 0xFFF0
        flags = LazyFlags(rflags: 0x2)
        es = .realMode(selector: 0)
        cs = SegmentRegister(selector: 0xF000, base: 0xFFFF_0000, limit: 0xFFFF, attributes: 0x9B)
        ss = .realMode(selector: 0)
        ds = .realMode(selector: 0)
        fs = .realMode(selector: 0)
        gs = .realMode(selector: 0)
        cr0 = 0x6000_0010
        cr2 = 0
        cr3 = 0
        cr4 = 0
        efer = 0
        gdtr = DescriptorTableRegister()
        idtr = DescriptorTableRegister()
        mode = .real
    }

    @inline(__always)
    public subscript(register: GPR) -> UInt64 {
        get { gpr[register.rawValue] }
        set { gpr[register.rawValue] = newValue }
    }

    @inline(__always)
    public subscript(segment: SegmentRegisterName) -> SegmentRegister {
        get { self[segmentIndex: segment.rawValue] }
        set { self[segmentIndex: segment.rawValue] = newValue }
    }

    /// A segment register by its encoding (0 ES ... 5 GS).
    @inline(__always)
    subscript(segmentIndex index: Int) -> SegmentRegister {
        get {
            switch index {
            case 0: return es
            case 1: return cs
            case 2: return ss
            case 3: return ds
            case 4: return fs
            default: return gs
            }
        }
        set {
            switch index {
            case 0: es = newValue
            case 1: cs = newValue
            case 2: ss = newValue
            case 3: ds = newValue
            case 4: fs = newValue
            default: gs = newValue
            }
        }
    }

    @inline(__always)
    mutating func segmentBase(_ index: Int) -> UInt64 {
        switch index {
        case 0: return es.base
        case 1: return cs.base
        case 2: return ss.base
        case 3: return ds.base
        case 4: return fs.base
        default: return gs.base
        }
    }

    /// RFLAGS, with the arithmetic flags materialised from the last operation.
    public var rflags: UInt64 {
        get { flags.materialized }
        set { flags = LazyFlags(rflags: (newValue & RFLAGS.writable) | 0x2) }
    }

    static func mode(cr0: UInt64, efer: UInt64, cs: SegmentRegister) -> CPUMode {
        if cr0 & ControlBits.cr0PE == 0 { return .real }
        if efer & ControlBits.eferLMA != 0 {
            if cs.isLong { return .long64 }
            return cs.isDefaultBig ? .compatibility32 : .compatibility16
        }
        return cs.isDefaultBig ? .protected32 : .protected16
    }

    /// The current privilege level, for the step loop: a mutating method, so
    /// that calling it does not copy the state (see CPU.swift).
    @inline(__always)
    mutating func privilegeLevel() -> UInt8 {
        cr0 & ControlBits.cr0PE == 0 ? 0 : cs.dpl
    }

    /// The current privilege level: CS.DPL in protected mode, 0 in real mode.
    public var cpl: UInt8 {
        cr0 & ControlBits.cr0PE == 0 ? 0 : cs.dpl
    }

    /// Register `index` (0-15), read in place: subscripting the InlineArray
    /// property copied all of it on every access (measured with perf).
    @inline(always)
    mutating func reg(_ index: Int) -> UInt64 {
        withUnsafeMutablePointer(to: &gpr) {
            UnsafeMutableRawPointer($0).load(fromByteOffset: (index & 15) &* 8, as: UInt64.self)
        }
    }

    @inline(always)
    mutating func setReg(_ index: Int, _ value: UInt64) {
        withUnsafeMutablePointer(to: &gpr) {
            UnsafeMutableRawPointer($0).storeBytes(of: value, toByteOffset: (index & 15) &* 8, as: UInt64.self)
        }
    }

    /// Reads a register at an operand size (1, 2, 4 or 8 bytes). Size 1 with
    /// `legacyHighBytes` maps registers 4-7 to AH, CH, DH, BH (no REX prefix).
    @inline(__always)
    mutating func read(_ index: Int, size: Int, legacyHighBytes: Bool) -> UInt64 {
        switch size {
        case 1:
            if legacyHighBytes && index >= 4 && index < 8 { return (reg(index - 4) >> 8) & 0xFF }
            return reg(index) & 0xFF
        case 2: return reg(index) & 0xFFFF
        case 4: return reg(index) & 0xFFFF_FFFF
        default: return reg(index)
        }
    }

    /// Writes a register at an operand size: 8- and 16-bit writes merge,
    /// 32-bit writes zero the upper half (as in 64-bit mode; in other modes
    /// the upper half is not visible).
    @inline(__always)
    mutating func write(_ index: Int, _ value: UInt64, size: Int, legacyHighBytes: Bool) {
        switch size {
        case 1:
            if legacyHighBytes && index >= 4 && index < 8 {
                setReg(index - 4, (reg(index - 4) & ~0xFF00) | ((value & 0xFF) << 8))
            } else {
                setReg(index, (reg(index) & ~0xFF) | (value & 0xFF))
            }
        case 2: setReg(index, (reg(index) & ~0xFFFF) | (value & 0xFFFF))
        case 4: setReg(index, value & 0xFFFF_FFFF)
        default: setReg(index, value)
        }
    }
}

/// MSRs whose value the CPU keeps but does not act on yet.
public struct ModelSpecificRegisters: Hashable, Sendable {
    /// Enabled at the default base; bit 8 (BSP) is for the owner to set.
    public var apicBase: UInt64 = 0xFEE0_0800
    public var sysenterCS: UInt64 = 0
    public var sysenterESP: UInt64 = 0
    public var sysenterEIP: UInt64 = 0
    /// The power-on PAT (Intel SDM 11.12.4).
    public var pat: UInt64 = 0x0007_0406_0007_0406
    public var star: UInt64 = 0
    public var lstar: UInt64 = 0
    public var cstar: UInt64 = 0
    public var syscallMask: UInt64 = 0
    public var kernelGSBase: UInt64 = 0
    /// IA32_ARCH_CAPABILITIES: the owner may set it (KVM_SET_MSRS), the guest only reads it.
    public var archCapabilities: UInt64 = ArchCapabilities.softCPU
    public init() {}
}

/// IA32_ARCH_CAPABILITIES bits (Intel SDM vol. 4, table 2-2; msr-index.h's ARCH_CAP_*).
public enum ArchCapabilities {
    /// CPUID.(EAX=7,ECX=0):EDX[29]: the MSR exists.
    public static let cpuidBit: UInt32 = 1 << 29
    public static let rdclNo: UInt64 = 1 << 0
    public static let skipVMEntryL1DFlush: UInt64 = 1 << 3
    public static let ssbNo: UInt64 = 1 << 4
    public static let mdsNo: UInt64 = 1 << 5
    public static let pschangeMCNo: UInt64 = 1 << 6
    public static let taaNo: UInt64 = 1 << 8
    public static let sbdrSSDPNo: UInt64 = 1 << 13
    public static let fbsdpNo: UInt64 = 1 << 14
    public static let psdpNo: UInt64 = 1 << 15
    public static let bhiNo: UInt64 = 1 << 20
    public static let pbrsbNo: UInt64 = 1 << 24
    public static let gdsNo: UInt64 = 1 << 26
    public static let rfdsNo: UInt64 = 1 << 27

    /// What this CPU reports: it executes nothing speculatively, keeps no
    /// data in fill or store buffers a later access could sample, and so
    /// has none of the side channels these bits deny (Meltdown, L1TF, SSB,
    /// MDS, TAA, MMIO stale data, RSB underflow, GDS, RFDS, BHI), and no
    /// page-size-change machine check. A guest that reads them needs no
    /// page-table isolation or buffer clearing, as on hardware that
    /// reports them (KVM's kvm_get_arch_capabilities sets the same for
    /// hosts without the bugs). No IBRS_ALL: there is no SPEC_CTRL MSR.
    public static let softCPU: UInt64 = rdclNo | skipVMEntryL1DFlush | ssbNo | mdsNo | pschangeMCNo | taaNo
        | sbdrSSDPNo | fbsdpNo | psdpNo | bhiNo | pbrsbNo | gdsNo | rfdsNo
}

/// MSR numbers the CPU knows.
public enum MSR {
    public static let tsc: UInt32 = 0x10
    public static let apicBase: UInt32 = 0x1B
    public static let sysenterCS: UInt32 = 0x174
    public static let sysenterESP: UInt32 = 0x175
    public static let sysenterEIP: UInt32 = 0x176
    public static let pat: UInt32 = 0x277
    public static let archCapabilities: UInt32 = 0x10A
    public static let efer: UInt32 = 0xC000_0080
    public static let star: UInt32 = 0xC000_0081
    public static let lstar: UInt32 = 0xC000_0082
    public static let cstar: UInt32 = 0xC000_0083
    public static let syscallMask: UInt32 = 0xC000_0084
    public static let fsBase: UInt32 = 0xC000_0100
    public static let gsBase: UInt32 = 0xC000_0101
    public static let kernelGSBase: UInt32 = 0xC000_0102
    public static let tscAux: UInt32 = 0xC000_0103
}

/// RFLAGS bit positions.
public enum RFLAGS {
    public static let cf: UInt64 = 1 << 0
    public static let pf: UInt64 = 1 << 2
    public static let af: UInt64 = 1 << 4
    public static let zf: UInt64 = 1 << 6
    public static let sf: UInt64 = 1 << 7
    public static let tf: UInt64 = 1 << 8
    public static let `if`: UInt64 = 1 << 9
    public static let df: UInt64 = 1 << 10
    public static let of: UInt64 = 1 << 11
    public static let iopl: UInt64 = 3 << 12
    public static let nt: UInt64 = 1 << 14
    public static let rf: UInt64 = 1 << 16
    public static let vm: UInt64 = 1 << 17
    public static let ac: UInt64 = 1 << 18
    public static let id: UInt64 = 1 << 21
    /// OF SF ZF AF PF CF.
    public static let arithmetic: UInt64 = cf | pf | af | zf | sf | of
    /// Bits a write to RFLAGS can set.
    public static let writable: UInt64 = arithmetic | tf | `if` | df | iopl | nt | rf | vm | ac | (3 << 19) | id
}

// Sizes are 1 to 8 bytes: wrapping arithmetic, so that the step loop has no
// overflow traps or range branches here.
@inline(always)
func sizeMask(_ size: Int) -> UInt64 {
    ~0 &>> UInt64(truncatingIfNeeded: 64 &- size &* 8)
}

@inline(always)
func signBit(_ size: Int) -> UInt64 { 1 &<< UInt64(truncatingIfNeeded: size &* 8 &- 1) }

/// Sign-extends the low `size` bytes of `value` to 64 bits.
@inline(always)
func signExtend(_ value: UInt64, size: Int) -> UInt64 {
    let shift = UInt64(truncatingIfNeeded: 64 &- size &* 8)
    return UInt64(bitPattern: Int64(bitPattern: value &<< shift) &>> Int64(bitPattern: shift))
}
