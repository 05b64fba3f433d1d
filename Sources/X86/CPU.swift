// The step loop. Guest faults and exits travel as return values: an
// instruction's handler returns false after storing the exit in `pending`,
// and the loop returns it. Nothing in the loop allocates, throws or calls
// through an existential.
//
// Files: CPUState (registers, segments, modes), Flags (lazy flags, flag
// instructions), Decoder, Execute (dispatch, operands), Memory
// (segmentation, paging, physical access), Arithmetic, DataTransfer,
// ControlFlow, String, PortIO, Debug (breakpoints, single-step, the
// owner's debugging, translation for a debugger).
//
// Performance rule learnt here: a non-mutating method on a large struct
// (CPUState, X86CPU) that is not inlined receives `self` by value, which is
// a memcpy of the whole state per call, as is reading one element of an
// InlineArray property. Hot helpers are therefore `mutating` (or
// @inline(__always)), registers are read in place (`reg`/`setReg`) and the
// mode is cached. Check with `perf record --call-graph dwarf` that
// __memmove does not show up in the loop.

import CX86Atomics

/// An `in` or `out` the host must perform.
public struct PortIOExit: Equatable, Sendable {
    public var port: UInt16
    /// 1, 2 or 4 bytes.
    public var size: Int
    public var isWrite: Bool
    /// The value written (for `out`); 0 for `in`, which the host answers with `completeInput`.
    public var data: UInt64
    /// Elements of a string `ins`, answered all at once with
    /// `completeStringInput`; 1 for every other access.
    public var count: Int = 1
}

/// A guest-physical access outside RAM.
public struct MMIOExit: Equatable, Sendable {
    public var address: UInt64
    public var size: Int
    public var isWrite: Bool
    /// The value written; 0 for a read, which the host answers with `completeMMIORead`.
    public var data: UInt64
}

/// Why `run` returned.
public enum X86Exit: Equatable, Sendable {
    /// An `out` is complete (RIP is past it); an `in` stays at its
    /// instruction until `completeInput` (as KVM shows it to user space).
    case io(PortIOExit)
    /// A write has been done (RIP past the instruction, or at a REP string
    /// instruction that continues); a read restarts its instruction, which
    /// takes the value given to `completeMMIORead`.
    case mmio(MMIOExit)
    /// HLT at CPL 0; RIP is past it.
    case halt
    /// A fault, with RIP at the faulting instruction, when
    /// `deliversExceptions` is off (otherwise the guest's IDT gets it).
    case exception(vector: UInt8, errorCode: UInt32?)
    /// A triple fault: an exception while delivering a double fault.
    case shutdown
    /// A stop for the CPU's owner (`hostDebug`): single-step, an INT3 it
    /// intercepts, or a #DB while it single-steps or sets breakpoints.
    case debug(DebugStop)
    /// An RDMSR or WRMSR for the owner (`interceptsMSRs`); RIP stays at the
    /// instruction until `completeMSRAccess`.
    case msr(MSRAccessExit)
    /// An MSR or CR8 access for the owner (`forwardsSystemRegisters`);
    /// RIP stays at the instruction until `completeSystemRegisterAccess`.
    case systemRegister(SystemRegisterExit)
    /// `maxInstructions` instructions completed.
    case instructionLimit
    /// Code fetched or a page table read from outside RAM: KVM reports
    /// these as an emulation failure.
    case emulationFailure(address: UInt64)
}

/// Interrupt shadow kinds (`X86CPU.interruptShadowKind`), with KVM's
/// numbers (KVM_X86_SHADOW_INT_MOV_SS, KVM_X86_SHADOW_INT_STI).
public enum InterruptShadow {
    public static let ssLoad: UInt8 = 1
    public static let sti: UInt8 = 2
}

/// Exception vectors.
public enum Vector: UInt8, Sendable {
    case de = 0, db = 1, bp = 3, of = 4, br = 5, ud = 6, nm = 7, df = 8, ts = 10, np = 11, ss = 12, gp = 13, pf = 14
    case mf = 16, xm = 19
}

/// One range of guest-physical memory backed by host memory: a KVM memory
/// slot as the CPU sees it.
public struct PhysicalRange: @unchecked Sendable {
    public var guestAddress: UInt64
    public var size: UInt64
    public var host: UnsafeMutableRawPointer
    /// Guest writes become MMIO exits and leave the memory unchanged.
    public var readOnly: Bool
    /// One bit per 4 KiB page of the range, set on each guest write; nil
    /// when the range's writes are not logged. The owner keeps it allocated
    /// while the CPU uses the range.
    public var dirtyBitmap: UnsafeMutablePointer<UInt64>?

    public init(guestAddress: UInt64, size: UInt64, host: UnsafeMutableRawPointer, readOnly: Bool = false,
                dirtyBitmap: UnsafeMutablePointer<UInt64>? = nil) {
        self.guestAddress = guestAddress
        self.size = size
        self.host = host
        self.readOnly = readOnly
        self.dirtyBitmap = dirtyBitmap
    }

    /// Sets page `page`'s bit in a dirty log such as `dirtyBitmap`, with one
    /// atomic OR as the kernel's set_bit_le: vCPU threads marking pages of
    /// one word, and KVM_GET_DIRTY_LOG taking it, lose no bit.
    @inline(always)
    public static func markDirty(_ bitmap: UnsafeMutablePointer<UInt64>, page: UInt64) {
        cx86_fetch_or_u64(bitmap + Int(page >> 6), 1 << (page & 63))
    }
}

/// Guest-physical memory: ranges of host memory at guest addresses, sorted
/// and not overlapping. Every access is checked against them; anything
/// outside is MMIO.
public struct PhysicalMemory: @unchecked Sendable {
    public let ranges: [PhysicalRange]

    /// `size` bytes of RAM at `base`, mapped at guest-physical 0. The caller
    /// keeps `base..<base+size` allocated and unaliased by Swift arrays for
    /// as long as a CPU uses it.
    public init(base: UnsafeMutableRawPointer, size: Int) {
        ranges = [PhysicalRange(guestAddress: 0, size: UInt64(size), host: base)]
    }

    /// Several ranges; the same obligations hold for each.
    public init(ranges: [PhysicalRange]) {
        self.ranges = ranges.filter { $0.size > 0 }.sorted { $0.guestAddress < $1.guestAddress }
    }

    /// The range holding `address`, by binary search.
    func range(containing address: UInt64) -> PhysicalRange? {
        var low = 0, high = ranges.count
        while low < high {
            let middle = (low + high) / 2
            let range = ranges[middle]
            if address < range.guestAddress {
                high = middle
            } else if address - range.guestAddress >= range.size {
                low = middle + 1
            } else {
                return range
            }
        }
        return nil
    }
}

/// The last range an access hit, kept inline so that the common access is
/// one subtraction and one compare.
struct HotRange {
    var start: UInt64 = 0
    var size: UInt64 = 0
    var host: UnsafeMutableRawPointer? = nil
    var dirtyBitmap: UnsafeMutablePointer<UInt64>? = nil
}

public struct X86CPU {
    public var state: CPUState
    /// Guest-physical memory. Setting it drops the cached ranges (and the
    /// TLB keeps physical addresses, so it stays valid).
    public var memory: PhysicalMemory {
        didSet {
            hotRead = HotRange()
            hotWrite = HotRange()
            codePage = CodePage()
            hostTLBGeneration = ~0
        }
    }
    var hotRead = HotRange()
    var hotWrite = HotRange()
    var pending: X86Exit = .instructionLimit
    /// An MMIO exit stored by a write; the loop stops after the instruction.
    var mmioWritePending = false
    /// The one-instruction interrupt shadow after an STI that set IF, and
    /// after a load of SS (MOV SS, POP SS): no external interrupt before
    /// the next instruction completes. `InterruptShadow` bits, as KVM numbers them.
    public var interruptShadowKind: UInt8 = 0
    public var interruptShadow: Bool {
        @inline(__always) get { interruptShadowKind != 0 }
        @inline(__always) set { interruptShadowKind = newValue ? InterruptShadow.sti : 0 }
    }
    /// Debugging by the CPU's owner (see Debug.swift).
    public var hostDebug = HostDebug()
    var debugUnit = DebugUnit()
    /// The host's answer to an MMIO read, taken by the restarted instruction.
    var mmioReadAnswer: (address: UInt64, value: UInt64)? = nil
    /// The register an `in` waits to fill (size in bytes, 0 if none).
    var inputSize = 0
    /// Where RIP goes when the `in` is answered.
    var inputNextRIP: UInt64 = 0
    /// An OUTS whose last element went out: the next `run` moves past it.
    var outputCompletionRIP: UInt64? = nil
    /// The string `ins` waiting for its data (count 0 if none).
    var stringInput = StringInput()
    /// Whether faults go through the guest's IDT (as on a real CPU) rather
    /// than out to the host as `.exception`.
    public var deliversExceptions = false
    /// The CPUID leaves the guest sees, as KVM_SET_CPUID2 gives them.
    public var cpuid: [CPUIDLeaf] = [] {
        didSet { guestFeatures = GuestFeatures(cpuid) }
    }
    /// What the CPUID lets paging and CR4 do (PageProtection.swift).
    var guestFeatures = GuestFeatures()
    /// A direct-mapped TLB of 4 KiB linear pages (see Memory.swift).
    var tlb = InlineArray<256, TLBEntry>(repeating: TLBEntry())
    var tlbGeneration: UInt64 = ~0
    var tlbFullGeneration: UInt64 = ~0
    /// Set while the CPU reads or writes system tables (GDT, LDT, IDT,
    /// TSS) or pushes a frame at a new CPL: supervisor accesses whatever CS says.
    var implicitSupervisor = false
    /// RDMSR and WRMSR handed to the owner (MSRIntercept.swift).
    var msrIntercept = MSRInterceptState()
    /// Decoded blocks (see DecodedCache.swift), and the storage that keeps
    /// them, which the step loop does not touch.
    var decoded: DecodedCache
    var decodedStorage: DecodedCacheStorage
    var codePage = CodePage()
    /// The tag bits of the accesses the host TLB may serve now: the CPL's,
    /// or `HostTLBEntry.invalidKey` (see `invalidateContext`).
    var accessKey: UInt64 = HostTLBEntry.invalidKey
    /// The paging generation the host TLB's entries were filled in; ~0 to
    /// drop them at the next refresh.
    var hostTLBGeneration: UInt64 = ~0
    /// The running block, whose bytes a store must not change unnoticed.
    var executingBlock: UnsafeMutablePointer<CachedBlock>? = nil
    /// A store hit the running block, or an MMIO write wants its exit: the
    /// block stops after the current instruction.
    var blockInterrupted = false
    /// Blocks checked in this epoch run without a check (see DecodedCache.swift).
    var codeEpoch: UInt64 = 1
    /// Off, every instruction is decoded where it is fetched and runs through
    /// `execute`: the reference the cache is tested against.
    var decodedCacheEnabled = true
    /// Set while the CPU reads or writes system tables: an implicit
    /// supervisor access, which SMAP forbids on user pages whatever EFLAGS.AC says.
    var systemTableAccess = false
    /// TLBEntry.user while CR4.SMEP or SMAP is on: a supervisor access that
    /// hits a user page's TLB entry takes the walk, which applies them.
    var supervisorUserGuard: UInt8 = 0
    /// The TSC, forwarded MSRs, NMI blocking and waiting events (Platform.swift).
    var platform = PlatformState()

    public init(memory: PhysicalMemory, state: CPUState = CPUState()) {
        self.memory = memory
        self.state = state
        decodedStorage = DecodedCacheStorage()
        decoded = DecodedCache(decodedStorage)
    }

    /// Answers the `in` of the last `.io` exit.
    public mutating func completeInput(_ value: UInt64) {
        guard inputSize > 0 else { return }
        state.write(0, value, size: inputSize, legacyHighBytes: false)
        state.rip = inputNextRIP
        inputSize = 0
        // The IN is done: a shadow it was in ends.
        interruptShadow = false
    }

    /// Answers the read of the last `.mmio` exit; the next `run` restarts the
    /// instruction, which takes this value.
    public mutating func completeMMIORead(address: UInt64, value: UInt64) {
        mmioReadAnswer = (address, value)
    }

    /// Runs until an exit or until `maxInstructions` instructions completed.
    public mutating func run(maxInstructions: Int) -> X86Exit {
        if let next = outputCompletionRIP {
            outputCompletionRIP = nil
            state.rip = next
            state.rflags &= ~RFLAGS.rf
        }
        refreshDebug()
        if let exit = takePendingDebugTraps() { return exit }
        prepareDecodedCache()
        defer { invalidateContext() }
        var executed = 0
        while executed < maxInstructions {
            // An event the owner holds can be taken at this boundary (Platform.swift).
            if platform.waitingEvents != 0 && executed > 0 && waitingEventCanBeTaken { return .instructionLimit }
            // Breakpoints, single-step or the owner's debugging: the slow
            // path, one instruction at a time, never from the cache.
            if debugUnit.armed || state.flags.bits & RFLAGS.tf != 0 {
                invalidateContext()
                if let exit = stepDebugged() { return exit }
                executed += 1
                continue
            }
            // In an interrupt shadow the next instruction goes the uncached
            // way, which ends the shadow after it (or keeps it over an exit
            // that leaves the instruction pending); blocks start outside one.
            // An event the owner holds waits for the instruction boundary at
            // which it can be taken: blocks run only while none can be (what
            // lets one be taken, IRET, POPF, STI, ends its block, and the
            // block loop comes back here after it).
            if decodedCacheEnabled && interruptShadowKind == 0 && (platform.waitingEvents == 0 || !waitingEventCanBeTaken) {
                switch runCachedBlocks(&executed, limit: maxInstructions) {
                case .limit:
                    continue
                case .exit:
                    return pending
                case .fault:
                    invalidateContext()
                    guard deliversExceptions, case .exception(let vector, let errorCode) = pending,
                          deliverException(vector, errorCode: errorCode) else { return pending }
                    executed &+= 1
                    continue
                case .uncached:
                    break
                }
            }
            // Decoded each time: a fetch that faults or leaves RAM, an
            // instruction across a page boundary, RF set, an interrupt
            // shadow (the instruction after STI). The fetch state is valid
            // here (whatever changes it begins a new epoch or ends the run),
            // and the instruction begins one where the block loop's would:
            // a serializing barrier, before it runs (`runFamily`); what the
            // block loop runs without one (a listed instruction, STI,
            // SWAPGS, RDTSCP) does not. In the boot most of these steps were
            // the instruction after an STI, and a new epoch after each had
            // every block that ran next checked again.
            var insn = Instruction()
            // RF suppresses instruction breakpoints for one instruction: it
            // is cleared when the instruction that saw it set completes (not
            // by the IRET that loads it).
            let resumeFlag = state.flags.bits & RFLAGS.rf
            // The shadow covers this instruction only; STI or an SS load here sets it anew.
            let shadow = interruptShadowKind
            interruptShadow = false
            let decoded = decode(&insn)
            if decoded && X86CPU.blockFlow(insn) == .barrier && X86CPU.isSerializing(insn) { invalidateContext() }
            guard decoded, execute(&insn) else {
                // Delivery changes CS and the CPL.
                invalidateContext()
                guard deliversExceptions, case .exception(let vector, let errorCode) = pending,
                      deliverException(vector, errorCode: errorCode) else {
                    if Self.leavesInstructionPending(pending) { interruptShadowKind = shadow }
                    return pending
                }
                executed += 1
                continue
            }
            if resumeFlag != 0 { state.flags.bits &= ~RFLAGS.rf }
            executed += 1
            if mmioWritePending {
                mmioWritePending = false
                return pending
            }
        }
        return .instructionLimit
    }

    /// Executes one instruction.
    public mutating func step() -> X86Exit { run(maxInstructions: 1) }

    /// An exit that leaves its instruction to finish (an IN waiting for its
    /// answer) or to restart (an MMIO read): the interrupt shadow over it holds.
    static func leavesInstructionPending(_ exit: X86Exit) -> Bool {
        switch exit {
        case .io(let io): return !io.isWrite
        case .mmio(let access): return !access.isWrite
        default: return false
        }
    }

    // MARK: Faults as return values

    @inline(__always)
    mutating func fault(_ vector: Vector, errorCode: UInt32? = nil) -> Bool {
        pending = .exception(vector: vector.rawValue, errorCode: errorCode)
        return false
    }

    @inline(__always)
    mutating func undefined() -> Bool { fault(.ud) }

    @inline(__always)
    mutating func exit(_ exit: X86Exit) -> Bool {
        pending = exit
        return false
    }
}
