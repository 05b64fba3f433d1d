// The step loop. Guest faults and exits travel as return values: an
// instruction's handler returns false after storing the exit in `pending`,
// and the loop returns it. Nothing in the loop allocates, throws or calls
// through an existential.
//
// Files: CPUState (registers, segments, modes), Flags (lazy flags, flag
// instructions), Decoder, Execute (dispatch, operands), Memory
// (segmentation, paging, physical access), Arithmetic, DataTransfer,
// ControlFlow, String, PortIO.
//
// Performance rule learnt here: a non-mutating method on a large struct
// (CPUState, X86CPU) that is not inlined receives `self` by value, which is
// a memcpy of the whole state per call, as is reading one element of an
// InlineArray property. Hot helpers are therefore `mutating` (or
// @inline(__always)), registers are read in place (`reg`/`setReg`) and the
// mode is cached. Check with `perf record --call-graph dwarf` that
// __memmove does not show up in the loop.

/// An `in` or `out` the host must perform.
public struct PortIOExit: Equatable, Sendable {
    public var port: UInt16
    /// 1, 2 or 4 bytes.
    public var size: Int
    public var isWrite: Bool
    /// The value written (for `out`); 0 for `in`, which the host answers with `completeInput`.
    public var data: UInt64
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
    /// The instruction is complete (RIP is past it); an `in` waits for `completeInput`.
    case io(PortIOExit)
    /// A write has been done (RIP past the instruction, or at a REP string
    /// instruction that continues); a read restarts its instruction, which
    /// takes the value given to `completeMMIORead`.
    case mmio(MMIOExit)
    /// HLT at CPL 0; RIP is past it.
    case halt
    /// A fault, with RIP at the faulting instruction. Delivery through the
    /// IDT does not exist yet: the host sees every exception.
    case exception(vector: UInt8, errorCode: UInt32?)
    /// `maxInstructions` instructions completed.
    case instructionLimit
    /// Code fetched or a page table read from outside RAM: KVM reports
    /// such an access as an emulation failure.
    case emulationFailure(address: UInt64)
}

/// Exception vectors.
public enum Vector: UInt8, Sendable {
    case de = 0, db = 1, bp = 3, ud = 6, nm = 7, df = 8, ts = 10, np = 11, ss = 12, gp = 13, pf = 14
}

/// Guest-physical RAM: `size` bytes at `base`, mapped at guest-physical 0.
/// Every access is checked against `size`; anything above is MMIO.
public struct PhysicalMemory {
    public let base: UnsafeMutableRawPointer
    public let size: UInt64

    /// The caller keeps `base..<base+size` allocated and unaliased by Swift
    /// arrays for as long as a CPU uses it.
    public init(base: UnsafeMutableRawPointer, size: Int) {
        self.base = base
        self.size = UInt64(size)
    }
}

public struct X86CPU {
    public var state: CPUState
    public let memory: PhysicalMemory
    var pending: X86Exit = .instructionLimit
    /// An MMIO exit stored by a write; the loop stops after the instruction.
    var mmioWritePending = false
    /// The host's answer to an MMIO read, taken by the restarted instruction.
    var mmioReadAnswer: (address: UInt64, value: UInt64)? = nil
    /// The register an `in` waits to fill (size in bytes, 0 if none).
    var inputSize = 0
    /// A direct-mapped TLB of 4 KiB linear pages (see Memory.swift).
    var tlb = InlineArray<256, TLBEntry>(repeating: TLBEntry())
    var tlbGeneration: UInt64 = ~0

    public init(memory: PhysicalMemory, state: CPUState = CPUState()) {
        self.memory = memory
        self.state = state
    }

    /// Answers the `in` of the last `.io` exit.
    public mutating func completeInput(_ value: UInt64) {
        guard inputSize > 0 else { return }
        state.write(0, value, size: inputSize, legacyHighBytes: false)
        inputSize = 0
    }

    /// Answers the read of the last `.mmio` exit; the next `run` restarts the
    /// instruction, which takes this value.
    public mutating func completeMMIORead(address: UInt64, value: UInt64) {
        mmioReadAnswer = (address, value)
    }

    /// Runs until an exit or until `maxInstructions` instructions completed.
    public mutating func run(maxInstructions: Int) -> X86Exit {
        var executed = 0
        while executed < maxInstructions {
            var insn = Instruction()
            guard decode(&insn) else { return pending }
            guard execute(&insn) else { return pending }
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

    /// CLI, STI, IN, OUT: allowed when CPL <= IOPL (the TSS I/O bitmap and
    /// VME do not exist yet).
    mutating func ioPrivileged() -> Bool {
        if state.cr0 & ControlBits.cr0PE == 0 { return true }
        return UInt64(state.privilegeLevel()) <= (state.flags.bits & RFLAGS.iopl) >> 12
    }
}
