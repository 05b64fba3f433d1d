// The x86 debug architecture (Intel SDM vol. 3, chapter 17), and debugging
// by the CPU's owner.
//
// The guest's own: DR0-DR3 breakpoints (an instruction breakpoint is a fault
// before the instruction, a data breakpoint a trap after it), DR6 status,
// DR7 control with general detect, RFLAGS.TF single-step (a trap after each
// instruction that began with TF set, held over the instruction after a MOV
// SS or POP SS), RF holding off instruction breakpoints for one instruction,
// and ICEBP (F1).
//
// The owner's (`HostDebug`, what KVM_SET_GUEST_DEBUG asks for): a stop after
// each instruction, INT3 stopping before it reaches the guest, and
// breakpoints of its own in place of the guest's. While the owner
// single-steps or sets breakpoints, every #DB becomes a `.debug` exit
// instead of reaching the guest, as VMX's #DB intercept makes it.
//
// None of it is on the fast path: `run` goes through `stepDebugged` only
// while something is armed or TF is set.

/// DR0-DR3, DR6 and DR7.
public struct DebugRegisterFile: Hashable, Sendable {
    public var dr0: UInt64 = 0
    public var dr1: UInt64 = 0
    public var dr2: UInt64 = 0
    public var dr3: UInt64 = 0
    /// 0xFFFF0FF0 at reset.
    public var dr6: UInt64 = DR6.activeLow
    /// 0x400 at reset.
    public var dr7: UInt64 = DR7.fixed1

    public init() {}

    /// DR0-DR3 by number.
    public subscript(breakpoint index: Int) -> UInt64 {
        get {
            switch index {
            case 0: return dr0
            case 1: return dr1
            case 2: return dr2
            default: return dr3
            }
        }
        set {
            switch index {
            case 0: dr0 = newValue
            case 1: dr1 = newValue
            case 2: dr2 = newValue
            default: dr3 = newValue
            }
        }
    }
}

/// DR6 bits.
public enum DR6 {
    /// B0-B3: which breakpoint conditions were met.
    public static let breakpoints: UInt64 = 0xF
    /// BD: the next instruction accessed a debug register (general detect).
    public static let bd: UInt64 = 1 << 13
    /// BS: single-step.
    public static let bs: UInt64 = 1 << 14
    /// The bits that read as 1 when no condition is reported: the fixed bits
    /// and the active-low ones (RTM, bus lock), DR6's value at reset.
    public static let activeLow: UInt64 = 0xFFFF_0FF0
    /// What MOV to DR6 can change: B0-B3, BD, BS, BT.
    static let writable: UInt64 = 0xE00F
}

/// DR7 bits.
public enum DR7 {
    /// GD: MOV to or from a debug register faults with DR6.BD.
    public static let gd: UInt64 = 1 << 13
    /// Bit 10 reads as 1.
    public static let fixed1: UInt64 = 0x400
    /// What MOV to DR7 can change: the enables, LE GE, RTM, GD, the RW/LEN fields.
    static let writable: UInt64 = 0xFFFF_2BFF
}

/// Debugging of the guest by the CPU's owner: what KVM_SET_GUEST_DEBUG turns
/// on. Its stops come out of `run` as `.debug` exits; the guest does not see them.
public struct HostDebug: Hashable, Sendable {
    /// Stop after each instruction, and after an event is delivered (at the
    /// handler's first instruction).
    public var singleStep = false
    /// INT3 (CC) stops before it runs, with RIP at it (KVM_GUESTDBG_USE_SW_BP).
    public var softwareBreakpoints = false
    /// `registers`' DR0-DR3 and DR7 are the breakpoints in force, in place of
    /// the guest's own (KVM_GUESTDBG_USE_HW_BP).
    public var hardwareBreakpoints = false
    /// The owner's breakpoint registers; DR6 is not used.
    public var registers = DebugRegisterFile()

    public init(singleStep: Bool = false, softwareBreakpoints: Bool = false, hardwareBreakpoints: Bool = false,
                registers: DebugRegisterFile = DebugRegisterFile()) {
        self.singleStep = singleStep
        self.softwareBreakpoints = softwareBreakpoints
        self.hardwareBreakpoints = hardwareBreakpoints
        self.registers = registers
    }

    /// Every #DB goes to the owner rather than into the guest (as VMX
    /// intercepts #DB while KVM single-steps or uses hardware breakpoints).
    public var takesDebugExceptions: Bool { singleStep || hardwareBreakpoints }
}

/// A stop for the CPU's owner (`struct kvm_debug_exit_arch`).
public struct DebugStop: Equatable, Sendable {
    /// 1 (#DB) or 3 (#BP).
    public var vector: UInt8
    /// The linear address of the next instruction to run (CS base + RIP).
    public var pc: UInt64
    /// What DR6 would say, active-low bits set; nil for a #BP, whose stop
    /// KVM fills without DR6 and DR7.
    public var dr6: UInt64?
    /// DR7 in force (the owner's while it uses hardware breakpoints); nil for a #BP.
    public var dr7: UInt64?

    public init(vector: UInt8, pc: UInt64, dr6: UInt64? = nil, dr7: UInt64? = nil) {
        self.vector = vector
        self.pc = pc
        self.dr6 = dr6
        self.dr7 = dr7
    }
}

/// The debug logic's working state, derived from the debug registers in
/// force and kept between instructions.
struct DebugUnit {
    /// `run` must take the slow path (TF is looked at separately).
    var armed = false
    /// One bit per breakpoint in force: instruction breakpoints; data
    /// breakpoints; those of the data ones that watch writes only.
    var codeBreakpoints: UInt8 = 0
    var dataBreakpoints: UInt8 = 0
    var writeOnly: UInt8 = 0
    var address0: UInt64 = 0, address1: UInt64 = 0, address2: UInt64 = 0, address3: UInt64 = 0
    var length0: UInt64 = 1, length1: UInt64 = 1, length2: UInt64 = 1, length3: UInt64 = 1
    /// B0-B3 of the data breakpoints the current instruction hit.
    var hits: UInt64 = 0
    /// DR6 bits of traps not yet taken: held over the instruction after an
    /// SS load, or over an exit at the end of the instruction (OUT, an MMIO
    /// write, IN, HLT), to be taken when `run` resumes.
    var pendingTraps: UInt64 = 0
    /// The owner single-stepped the instruction the pending traps belong to.
    var pendingOwnerStep = false
    /// A REP string instruction stops after each iteration (single-step).
    var stepping = false

    @inline(__always)
    func address(_ index: Int) -> UInt64 {
        switch index {
        case 0: return address0
        case 1: return address1
        case 2: return address2
        default: return address3
        }
    }

    @inline(__always)
    func length(_ index: Int) -> UInt64 {
        switch index {
        case 0: return length0
        case 1: return length1
        case 2: return length2
        default: return length3
        }
    }

    mutating func set(_ index: Int, address: UInt64, length: UInt64) {
        switch index {
        case 0: address0 = address; length0 = length
        case 1: address1 = address; length1 = length
        case 2: address2 = address; length2 = length
        default: address3 = address; length3 = length
        }
    }
}

extension X86CPU {
    /// DR7 in force: the owner's while it uses hardware breakpoints, else the guest's.
    public var effectiveDR7: UInt64 {
        hostDebug.hardwareBreakpoints ? hostDebug.registers.dr7 : state.debugRegisters.dr7
    }

    /// Rebuilds the breakpoints in force from DR7 and DR0-DR3 (the owner's or
    /// the guest's). Called when `run` starts and when the guest writes a
    /// debug register.
    mutating func refreshDebug() {
        let registers = hostDebug.hardwareBreakpoints ? hostDebug.registers : state.debugRegisters
        let dr7 = registers.dr7
        var code: UInt8 = 0, data: UInt8 = 0, writes: UInt8 = 0
        for i in 0..<4 where (dr7 >> UInt64(2 * i)) & 3 != 0 {
            let bit = UInt8(1 << i)
            let rw = (dr7 >> UInt64(16 + 4 * i)) & 3
            let len = (dr7 >> UInt64(18 + 4 * i)) & 3
            switch rw {
            // An instruction breakpoint needs LEN 00 (other lengths are
            // undefined; KVM's emulator matches RW/LEN 0000 only).
            case 0 where len == 0: code |= bit
            case 1: data |= bit; writes |= bit
            case 3: data |= bit
            // I/O breakpoints (RW 10 with CR4.DE) are not modelled.
            default: continue
            }
            // LEN: 00 one byte, 01 two, 11 four, 10 eight.
            let length: UInt64 = len == 2 ? 8 : len + 1
            debugUnit.set(i, address: registers[breakpoint: i], length: length)
        }
        debugUnit.codeBreakpoints = code
        debugUnit.dataBreakpoints = data
        debugUnit.writeOnly = writes
        debugUnit.armed = code != 0 || data != 0 || hostDebug.singleStep || hostDebug.softwareBreakpoints
            || debugUnit.pendingTraps != 0 || debugUnit.pendingOwnerStep
    }

    /// Outside 64-bit mode linear addresses, and the breakpoint addresses
    /// compared with them, have 32 bits.
    @inline(__always)
    mutating func breakpointAddress(_ index: Int) -> UInt64 {
        let address = debugUnit.address(index)
        if case .long64 = state.mode { return address }
        return address & 0xFFFF_FFFF
    }

    /// B0-B3 of the instruction breakpoints at linear address `address`.
    mutating func codeBreakpointHits(_ address: UInt64) -> UInt64 {
        var hits: UInt64 = 0
        for i in 0..<4 where debugUnit.codeBreakpoints & UInt8(1 << i) != 0 && breakpointAddress(i) == address {
            hits |= 1 << UInt64(i)
        }
        return hits
    }

    /// Records the data breakpoints an access of `size` bytes at linear
    /// `address` hits: any byte of it inside a breakpoint's aligned range.
    @inline(never)
    mutating func noteDataAccess(_ address: UInt64, size: Int, write: Bool) {
        for i in 0..<4 where debugUnit.dataBreakpoints & UInt8(1 << i) != 0 {
            if !write && debugUnit.writeOnly & UInt8(1 << i) != 0 { continue }
            let length = debugUnit.length(i)
            let start = breakpointAddress(i) & ~(length - 1)
            if address &- start < length || start &- address < UInt64(size) {
                debugUnit.hits |= 1 << UInt64(i)
            }
        }
    }

    /// The linear address of the next instruction, as a stop reports it (KVM's kvm_get_linear_rip).
    mutating func linearRIP() -> UInt64 {
        linear(SegmentRegisterName.cs.rawValue, state.rip)
    }

    /// A #DB stop for the owner with `bits` in DR6.
    mutating func ownerDebugStop(_ bits: UInt64) -> X86Exit {
        .debug(DebugStop(vector: 1, pc: linearRIP(), dr6: DR6.activeLow | bits, dr7: effectiveDR7))
    }

    /// DR6 as a #DB leaves it: B0-B3 replaced, BD BS BT kept and added to, the
    /// active-low bits set (KVM's kvm_deliver_exception_payload); and DR7.GD
    /// cleared, so that the handler can use the debug registers.
    mutating func recordDebugException(_ bits: UInt64) {
        let dr6 = (state.debugRegisters.dr6 & ~DR6.breakpoints) | DR6.activeLow | bits
        state.debugRegisters.dr6 = dr6 & ~(1 << 12)
        state.debugRegisters.dr7 &= ~DR7.gd
    }

    /// Delivers #DB to the guest with `bits` in DR6. Nil when the guest's
    /// handler is next, else the exit delivery ended in.
    mutating func deliverDebugException(_ bits: UInt64, returnRIP: UInt64) -> X86Exit? {
        recordDebugException(bits)
        guard deliversExceptions else { return .exception(vector: Vector.db.rawValue, errorCode: nil) }
        if deliver(Vector.db.rawValue, errorCode: nil, returnRIP: returnRIP, software: false) { return nil }
        guard case .exception(let second, let errorCode) = pending else { return pending }
        return deliverException(second, errorCode: errorCode) ? nil : pending
    }

    /// Takes debug traps of the last instruction: a stop for the owner
    /// (`ownerStep`: the owner single-stepped it) or a #DB for the guest.
    mutating func takeDebugTraps(_ bits: UInt64, ownerStep: Bool) -> X86Exit? {
        if hostDebug.takesDebugExceptions {
            return ownerDebugStop(bits | (ownerStep ? DR6.bs : 0))
        }
        guard bits != 0 else { return nil }
        return deliverDebugException(bits, returnRIP: state.rip)
    }

    /// Takes the debug traps left pending by the exit that ended the last
    /// `run` (after an OUT, IN, MMIO write or HLT): a #DB into the guest, or
    /// a stop for the owner, returned. They come before any event the owner
    /// injects next, as a trap of the last instruction comes before an
    /// interrupt; `run` takes them itself if nothing did. An `in` left
    /// unanswered restarts instead, and its traps go.
    public mutating func takePendingDebugTraps() -> X86Exit? {
        guard debugUnit.pendingTraps != 0 || debugUnit.pendingOwnerStep else { return nil }
        let bits = debugUnit.pendingTraps, ownerStep = debugUnit.pendingOwnerStep
        debugUnit.pendingTraps = 0
        debugUnit.pendingOwnerStep = false
        if inputSize > 0 || hasStringInput { return nil }
        guard bits != 0 || (ownerStep && hostDebug.singleStep) else { return nil }
        return takeDebugTraps(bits, ownerStep: ownerStep && hostDebug.singleStep)
    }

    /// One instruction with the debug checks: instruction breakpoints
    /// before it, INT3 interception, single-step and data breakpoint traps
    /// after it. Nil to go on, else the exit.
    mutating func stepDebugged() -> X86Exit? {
        let singleStep = state.flags.bits & RFLAGS.tf != 0
        let ownerStep = hostDebug.singleStep
        let resumeFlag = state.flags.bits & RFLAGS.rf
        // Intel CPUs hold off instruction breakpoints in a MOV SS shadow.
        let shadow = interruptShadowKind
        let afterSSLoad = shadow & InterruptShadow.ssLoad != 0
        interruptShadow = false
        if debugUnit.codeBreakpoints != 0 && resumeFlag == 0 && !afterSSLoad {
            let hits = codeBreakpointHits(linearRIP())
            if hits != 0 {
                // A fault: RIP stays at the instruction, and the frame's RF is not set.
                debugUnit.pendingTraps = 0
                debugUnit.pendingOwnerStep = false
                if hostDebug.takesDebugExceptions { return ownerDebugStop(hits) }
                return deliverDebugException(hits, returnRIP: state.rip)
            }
        }
        var insn = Instruction()
        debugUnit.hits = 0
        guard decode(&insn) else { return debugStepFailed(ownerStep: ownerStep, shadow: shadow) }
        if insn.opcode == 0xCC && hostDebug.softwareBreakpoints {
            // KVM intercepts #BP: RIP stays at the INT3 and the guest sees nothing.
            debugUnit.pendingTraps = 0
            debugUnit.pendingOwnerStep = false
            return .debug(DebugStop(vector: Vector.bp.rawValue, pc: linearRIP()))
        }
        debugUnit.stepping = singleStep || ownerStep
        let completed = execute(&insn)
        debugUnit.stepping = false
        guard completed else { return debugStepFailed(ownerStep: ownerStep, shadow: shadow) }
        if resumeFlag != 0 { state.flags.bits &= ~RFLAGS.rf }
        let traps = debugUnit.pendingTraps | debugUnit.hits | (singleStep ? DR6.bs : 0)
        let owner = ownerStep || debugUnit.pendingOwnerStep
        debugUnit.pendingTraps = 0
        debugUnit.pendingOwnerStep = false
        if interruptShadowKind & InterruptShadow.ssLoad != 0 {
            // After MOV SS or POP SS the traps wait for the next instruction to complete.
            debugUnit.pendingTraps = traps
            debugUnit.pendingOwnerStep = owner
            debugUnit.armed = true
            if mmioWritePending {
                mmioWritePending = false
                return pending
            }
            return nil
        }
        if mmioWritePending {
            // The write's exit comes first; the traps are taken when `run` resumes.
            mmioWritePending = false
            keepDebugTraps(traps, ownerStep: owner)
            return pending
        }
        guard traps != 0 || owner else { return nil }
        return takeDebugTraps(traps, ownerStep: owner)
    }

    /// Keeps traps for the next `run`.
    mutating func keepDebugTraps(_ bits: UInt64, ownerStep: Bool) {
        debugUnit.pendingTraps = bits
        debugUnit.pendingOwnerStep = ownerStep
        if bits != 0 || ownerStep { debugUnit.armed = true }
    }

    /// The instruction did not complete in this step: it faulted (its traps
    /// go; the owner, single-stepping, stops at the handler), or it exits.
    mutating func debugStepFailed(ownerStep: Bool, shadow: UInt8) -> X86Exit? {
        if Self.leavesInstructionPending(pending) { interruptShadowKind = shadow }
        // Traps held over from an SS load before this instruction.
        let held = debugUnit.pendingTraps
        debugUnit.pendingTraps = 0
        debugUnit.pendingOwnerStep = false
        switch pending {
        case .exception(let vector, let errorCode):
            guard deliversExceptions, deliverException(vector, errorCode: errorCode) else { return pending }
            return ownerStep ? ownerDebugStop(DR6.bs) : nil
        case .io:
            // An OUT has completed (RIP is past it, or at a REP OUTS that goes
            // on); an IN completes when it is answered. Either way the traps
            // are taken when `run` resumes. (KVM's emulator loses the owner's
            // stop after an OUT to user space: a FIXME in x86_emulate_instruction.
            // VMX's path, complete_fast_pio_out, keeps it, as here.)
            keepDebugTraps(completedTraps(held), ownerStep: ownerStep)
        case .halt:
            // KVM reports the HLT exit even when single-stepping (kvm_emulate_halt).
            keepDebugTraps(completedTraps(held), ownerStep: false)
        default:
            break
        }
        return pending
    }

    /// The traps of an instruction that completes across an exit.
    mutating func completedTraps(_ held: UInt64) -> UInt64 {
        // TF as the instruction began is not at hand here; the instruction
        // (IN, OUT, HLT) does not change it.
        held | debugUnit.hits | (state.flags.bits & RFLAGS.tf != 0 ? DR6.bs : 0)
    }

    /// F1 ICEBP (INT1): a #DB trap without a DR6 condition, not checked
    /// against the gate's DPL. The owner, when it takes #DB, stops at the
    /// instruction (VMX exits on ICEBP itself).
    mutating func executeICEBP(_ insn: inout Instruction) -> Bool {
        if hostDebug.takesDebugExceptions { return exit(ownerDebugStop(0)) }
        recordDebugException(0)
        return deliver(Vector.db.rawValue, errorCode: nil, returnRIP: insn.nextRIP, software: false)
    }

    /// 0F 21 MOV r, DRn and 0F 23 MOV DRn, r, at CPL 0: DR4 and DR5 are DR6
    /// and DR7 unless CR4.DE makes them #UD; DR7.GD makes the access a #DB
    /// fault with DR6.BD (a stop for the owner when its breakpoints are in
    /// force). Writes to DR6 and DR7 keep their fixed bits; bits above 31 are #GP.
    mutating func executeMoveDebug(_ insn: inout Instruction) -> Bool {
        guard state.privilegeLevel() == 0 else { return fault(.gp, errorCode: 0) }
        var register = insn.reg
        guard register < 8 else { return undefined() }
        if register == 4 || register == 5 {
            if state.cr4 & Self.cr4DE != 0 { return undefined() }
            register += 2
        }
        if effectiveDR7 & DR7.gd != 0 {
            if hostDebug.hardwareBreakpoints { return exit(ownerDebugStop(DR6.bd)) }
            recordDebugException(DR6.bd)
            return fault(.db)
        }
        let size = insn.mode64 ? 8 : 4
        if insn.opcode == 0x121 {
            let value: UInt64
            switch register {
            case 0...3: value = state.debugRegisters[breakpoint: register]
            case 6: value = state.debugRegisters.dr6
            default: value = state.debugRegisters.dr7
            }
            state.write(insn.rm, value & sizeMask(size), size: 8, legacyHighBytes: false)
        } else {
            let value = state.read(insn.rm, size: size, legacyHighBytes: false)
            switch register {
            case 0...3:
                state.debugRegisters[breakpoint: register] = value
            case 6:
                guard value >> 32 == 0 else { return fault(.gp, errorCode: 0) }
                state.debugRegisters.dr6 = (value & DR6.writable) | DR6.activeLow
            default:
                guard value >> 32 == 0 else { return fault(.gp, errorCode: 0) }
                state.debugRegisters.dr7 = (value & DR7.writable) | DR7.fixed1
            }
            refreshDebug()
        }
        state.rip = insn.nextRIP
        return true
    }

    static let cr4DE: UInt64 = 1 << 3
}

// MARK: Translation for a debugger

extension X86CPU {
    /// The guest-physical address of linear `address` under the present
    /// paging mode, or nil where the walk finds a page not present, a
    /// reserved bit set or a table outside memory. Unlike the CPU's own
    /// walk it changes nothing: no accessed or dirty bits, no TLB fill, no
    /// fault. It is KVM's walk for KVM_TRANSLATE: with the system's rights
    /// (no permission is checked), no canonical check, and the reserved
    /// bits KVM derives from the guest's CPUID (MAXPHYADDR from leaf
    /// 0x80000008, 36 without it; NX only with EFER.NXE). 1 GiB pages and
    /// PSE-36 are allowed as the owner says (KVM: where both the guest's
    /// CPUID and KVM's support have them).
    public func translateForDebugger(_ address: UInt64, gigabytePages: Bool, pse36: Bool) -> UInt64? {
        let cr0 = state.cr0, cr4 = state.cr4
        guard cr0 & ControlBits.cr0PG != 0 else { return address }
        let maxPhysical = guestMaxPhysicalAddressBits
        // Bits maxPhysical...51 and, without NXE, bit 63.
        var highReserved = (maxPhysical < 52 ? ((1 << 52) - 1) & ~((1 << maxPhysical) - 1) : 0) as UInt64
        if state.efer & ControlBits.eferNXE == 0 { highReserved |= 1 << 63 }
        let frameMask: UInt64 = 0x000F_FFFF_FFFF_F000
        if state.efer & ControlBits.eferLMA != 0 {
            var table = state.cr3 & frameMask
            var shift: UInt64 = 39
            while true {
                guard let entry = loadPhysical(table + ((address >> shift) & 0x1FF) * 8, size: 8),
                      entry & 1 != 0, entry & highReserved == 0 else { return nil }
                let large = entry & 0x80 != 0
                switch shift {
                case 39 where large: return nil
                case 30 where large:
                    guard gigabytePages, entry & 0x3FFF_E000 == 0 else { return nil }
                case 21 where large:
                    guard entry & 0x1F_E000 == 0 else { return nil }
                default: break
                }
                if shift == 12 || ((shift == 30 || shift == 21) && large) {
                    let mask: UInt64 = (1 << shift) - 1
                    return (entry & frameMask & ~mask) | (address & mask)
                }
                table = entry & frameMask
                shift -= 9
            }
        }
        if cr4 & ControlBits.cr4PAE != 0 {
            // The PDPTEs are checked when CR3 is loaded, not here.
            highReserved |= 0x7FF0_0000_0000_0000
            guard let pdpte = loadPhysical((state.cr3 & 0xFFFF_FFE0) + ((address >> 30) & 3) * 8, size: 8),
                  pdpte & 1 != 0,
                  let pde = loadPhysical((pdpte & frameMask) + ((address >> 21) & 0x1FF) * 8, size: 8),
                  pde & 1 != 0, pde & highReserved == 0 else { return nil }
            if pde & 0x80 != 0 {
                guard pde & 0x1F_E000 == 0 else { return nil }
                return (pde & 0x000F_FFFF_FFE0_0000) | (address & 0x1F_FFFF)
            }
            guard let pte = loadPhysical((pde & frameMask) + ((address >> 12) & 0x1FF) * 8, size: 8),
                  pte & 1 != 0, pte & highReserved == 0 else { return nil }
            return (pte & frameMask) | (address & 0xFFF)
        }
        guard let pde = loadPhysical((state.cr3 & 0xFFFF_F000) + ((address >> 22) & 0x3FF) * 4, size: 4),
              pde & 1 != 0 else { return nil }
        if pde & 0x80 != 0 && cr4 & Self.cr4PSE != 0 {
            // A 4 MiB page, as KVM's own walker takes it (paging_tmpl.h:
            // pse36_gfn_delta, rsvd_bits(17, 21)): with PSE-36, bits 13-16
            // are physical bits 32-35 (within MAXPHYADDR) and 17-21 reserved;
            // without it, 13-21 are. The CPU's walk (GuestFeatures) follows
            // the SDM up to MAXPHYADDR 40, as the hardware does under EPT:
            // KVM's answer and the guest's access differ there, and so do ours.
            let high = (pde >> 13) & 0xF
            guard pde & (pse36 ? 0x3E_0000 : 0x3F_E000) == 0, high << 32 < (1 << maxPhysical) else { return nil }
            return (pde & 0xFFC0_0000) | high << 32 | (address & 0x3F_FFFF)
        }
        guard let pte = loadPhysical((pde & 0xFFFF_F000) + ((address >> 12) & 0x3FF) * 4, size: 4),
              pte & 1 != 0 else { return nil }
        return (pte & 0xFFFF_F000) | (address & 0xFFF)
    }

    static let cr4PSE: UInt64 = 1 << 4

    /// MAXPHYADDR as KVM reads it from the guest's CPUID (cpuid_query_maxphyaddr).
    var guestMaxPhysicalAddressBits: UInt64 {
        guard let top = findCPUID(0x8000_0000, 0), top.eax >= 0x8000_0008,
              let leaf = findCPUID(0x8000_0008, 0) else { return 36 }
        return UInt64(leaf.eax & 0xFF)
    }

    /// `size` bytes of guest-physical memory, little-endian, or nil outside RAM.
    func loadPhysical(_ address: UInt64, size: Int) -> UInt64? {
        guard let range = memory.range(containing: address), range.size - (address - range.guestAddress) >= UInt64(size) else {
            return nil
        }
        let host = range.host + Int(address - range.guestAddress)
        return size == 8 ? host.loadUnaligned(as: UInt64.self) : UInt64(host.loadUnaligned(as: UInt32.self))
    }
}

// MARK: Event injection

extension X86CPU {
    /// Delivers an event the CPU's owner injects before the next instruction
    /// (KVM's event injection, which does not look at IF): exception or
    /// interrupt `vector`, with `errorCode` where it has one. A `software`
    /// event (#BP, #OF, INT n) is checked against the gate's DPL and returns
    /// `instructionLength` bytes past RIP. Nil when the handler is next;
    /// else the exit delivery ended in, or the owner's single-step stop at
    /// the handler.
    public mutating func injectEvent(_ vector: UInt8, errorCode: UInt32?, software: Bool = false,
                                     instructionLength: UInt64 = 0) -> X86Exit? {
        interruptShadow = false
        let returnRIP = state.rip &+ instructionLength
        if deliver(vector, errorCode: errorCode, returnRIP: returnRIP, software: software) { return ownerStepAfterEvent() }
        guard case .exception(let second, let code) = pending else { return pending }
        return deliverException(second, errorCode: code) ? ownerStepAfterEvent() : pending
    }
}
