// Exception and interrupt delivery through the IVT (real mode) or the IDT
// (protected and long mode), INT n, INT3 and IRET. Delivery that would need
// what the CPU does not model yet (a stack switch through the TSS, task
// gates, 16-bit gates) ends in an emulation failure, which KVM reports as an
// internal error, rather than in wrong behaviour.

/// One CPUID leaf (`struct kvm_cpuid_entry2` without the ABI).
public struct CPUIDLeaf: Hashable, Sendable {
    public var function: UInt32
    public var index: UInt32
    /// The index selects a sub-leaf (KVM_CPUID_FLAG_SIGNIFCANT_INDEX).
    public var significantIndex: Bool
    public var eax: UInt32, ebx: UInt32, ecx: UInt32, edx: UInt32

    public init(function: UInt32, index: UInt32 = 0, significantIndex: Bool = false,
                eax: UInt32 = 0, ebx: UInt32 = 0, ecx: UInt32 = 0, edx: UInt32 = 0) {
        self.function = function
        self.index = index
        self.significantIndex = significantIndex
        self.eax = eax
        self.ebx = ebx
        self.ecx = ecx
        self.edx = edx
    }
}

extension X86CPU {
    /// Delivers a fault raised by an instruction (RIP at it). A fault while
    /// delivering becomes #DF or is delivered in turn, as the SDM's table
    /// 6-5 says; a fault while delivering #DF is a triple fault. Returns
    /// false with `pending` set when delivery ends in an exit.
    mutating func deliverException(_ vector: UInt8, errorCode: UInt32?) -> Bool {
        var vector = vector
        var errorCode = errorCode
        while true {
            // A fault's saved RFLAGS has RF set, so that the instruction can
            // restart past an instruction breakpoint (KVM sets it in the live
            // flags, where it stays after a triple fault). Real mode's FLAGS
            // image has no RF, and KVM leaves it clear there.
            if state.mode != .real { state.rflags |= RFLAGS.rf }
            if deliver(vector, errorCode: errorCode, returnRIP: state.rip, software: false) { return true }
            guard case .exception(let second, let secondCode) = pending else { return false }
            if vector == Vector.df.rawValue {
                pending = .shutdown
                return false
            }
            if Self.isDoubleFault(first: vector, second: second) {
                vector = Vector.df.rawValue
                errorCode = 0
            } else {
                vector = second
                errorCode = secondCode
            }
        }
    }

    /// #DE #TS #NP #SS #GP.
    static func isContributory(_ vector: UInt8) -> Bool {
        vector == 0 || (vector >= 10 && vector <= 13)
    }

    static func isDoubleFault(first: UInt8, second: UInt8) -> Bool {
        if isContributory(first) { return isContributory(second) }
        if first == Vector.pf.rawValue { return isContributory(second) || second == Vector.pf.rawValue }
        return false
    }

    /// Delivers one event. `software` is INT n/INT3: the gate's DPL must
    /// allow the CPL, and the error code's EXT bit is clear.
    mutating func deliver(_ vector: UInt8, errorCode: UInt32?, returnRIP: UInt64, software: Bool) -> Bool {
        if case .real = state.mode { return deliverReal(vector, returnRIP: returnRIP) }
        let long = state.efer & ControlBits.eferLMA != 0
        let gateSize: UInt64 = long ? 16 : 8
        let entry = UInt64(vector) * gateSize
        let idtErrorCode = UInt32(vector) << 3 | 2 | (software ? 0 : 1)
        guard entry + gateSize - 1 <= UInt64(state.idtr.limit) else { return fault(.gp, errorCode: idtErrorCode) }
        guard let low = readLinear(state.idtr.base &+ entry, size: 8) else { return false }
        var high: UInt64 = 0
        if long {
            guard let value = readLinear(state.idtr.base &+ entry &+ 8, size: 8) else { return false }
            high = value
        }
        let type = (low >> 40) & 0xF
        switch type {
        case 0xE, 0xF:
            break
        case 0x5...0x7 where !long:
            // Task gates and 16-bit gates are valid but not modelled yet.
            pending = .emulationFailure(address: state.idtr.base &+ entry)
            return false
        default:
            return fault(.gp, errorCode: idtErrorCode)
        }
        let cpl = state.privilegeLevel()
        if software && UInt8((low >> 45) & 3) < cpl { return fault(.gp, errorCode: idtErrorCode) }
        guard low & (1 << 47) != 0 else { return fault(.np, errorCode: idtErrorCode) }
        let selector = UInt16(truncatingIfNeeded: low >> 16)
        var offset = (low & 0xFFFF) | ((low >> 32) & 0xFFFF_0000)
        if long { offset |= (high & 0xFFFF_FFFF) << 32 }
        guard var target = codeSegment(selector, external: !software) else { return false }
        if target.dpl > cpl { return fault(.gp, errorCode: UInt32(selector & 0xFFFC) | (software ? 0 : 1)) }
        let conforming = target.attributes & 4 != 0
        if (target.dpl < cpl && !conforming) || (long && (low >> 32) & 7 != 0) {
            // A stack switch through the TSS (or an IST stack).
            pending = .emulationFailure(address: state.idtr.base &+ entry)
            return false
        }
        let flags = state.rflags
        let savedRSP = state.reg(4)
        let pushed: Bool
        if long {
            let rsp = savedRSP
            state.setReg(4, rsp & ~0xF)
            pushed = push(UInt64(state.ss.selector), size: 8) && push(rsp, size: 8) && push(flags, size: 8)
                && push(UInt64(state.cs.selector), size: 8) && push(returnRIP, size: 8)
                && (errorCode.map { push(UInt64($0), size: 8) } ?? true)
        } else {
            pushed = push(flags, size: 4) && push(UInt64(state.cs.selector), size: 4) && push(returnRIP, size: 4)
                && (errorCode.map { push(UInt64($0), size: 4) } ?? true)
        }
        guard pushed else {
            state.setReg(4, savedRSP)
            return false
        }
        var cleared = RFLAGS.tf | RFLAGS.nt | RFLAGS.rf | RFLAGS.vm
        if type == 0xE { cleared |= RFLAGS.if }
        state.rflags = flags & ~cleared
        target.selector = (selector & 0xFFFC) | UInt16(cpl)
        state.cs = target
        state.rip = long ? offset : offset & 0xFFFF_FFFF
        return true
    }

    /// Real mode: FLAGS, CS and IP on the stack, CS:IP from the IVT.
    mutating func deliverReal(_ vector: UInt8, returnRIP: UInt64) -> Bool {
        let entry = UInt64(vector) * 4
        guard entry + 3 <= UInt64(state.idtr.limit) else { return fault(.gp, errorCode: 0) }
        guard let pointer = readLinear(state.idtr.base &+ entry, size: 4) else { return false }
        let flags = state.rflags
        let savedRSP = state.reg(4)
        guard push(flags & 0xFFFF, size: 2), push(UInt64(state.cs.selector), size: 2), push(returnRIP & 0xFFFF, size: 2) else {
            state.setReg(4, savedRSP)
            return false
        }
        state.rflags = flags & ~(RFLAGS.if | RFLAGS.tf | RFLAGS.ac)
        state.cs = .realMode(selector: UInt16(truncatingIfNeeded: pointer >> 16), code: true)
        state.rip = pointer & 0xFFFF
        return true
    }

    /// The descriptor of a code segment from the GDT, for a far transfer or
    /// a gate: #GP for a null, LDT or non-code selector, #NP for one not present.
    mutating func codeSegment(_ selector: UInt16, external: Bool) -> SegmentRegister? {
        let errorCode = UInt32(selector & 0xFFFC) | (external ? 1 : 0)
        // The LDT does not exist yet.
        guard selector & 0xFFFC != 0, selector & 4 == 0 else {
            _ = fault(.gp, errorCode: errorCode)
            return nil
        }
        let index = UInt64(selector & 0xFFF8)
        guard index + 7 <= UInt64(state.gdtr.limit) else {
            _ = fault(.gp, errorCode: errorCode)
            return nil
        }
        guard let descriptor = readLinear(state.gdtr.base &+ index, size: 8) else { return nil }
        var attributes = UInt16(truncatingIfNeeded: (descriptor >> 40) & 0xF0FF)
        guard attributes & 0x18 == 0x18 else {
            _ = fault(.gp, errorCode: errorCode)
            return nil
        }
        guard attributes & 0x80 != 0 else {
            _ = fault(.np, errorCode: errorCode)
            return nil
        }
        if attributes & 1 == 0 {
            attributes |= 1
            guard writeLinear(state.gdtr.base &+ index &+ 5, UInt64(attributes & 0xFF), size: 1) else { return nil }
        }
        var limit = UInt32(truncatingIfNeeded: (descriptor & 0xFFFF) | ((descriptor >> 32) & 0xF_0000))
        if attributes & 0x8000 != 0 { limit = (limit << 12) | 0xFFF }
        let base = ((descriptor >> 16) & 0xFF_FFFF) | ((descriptor >> 32) & 0xFF00_0000)
        return SegmentRegister(selector: selector, base: base, limit: limit, attributes: attributes)
    }

    /// CC INT3, CD INT n: traps, so the return address is the next instruction.
    mutating func executeSoftwareInterrupt(_ insn: inout Instruction) -> Bool {
        let vector = insn.opcode == 0xCC ? Vector.bp.rawValue : UInt8(truncatingIfNeeded: insn.immediate)
        // A fault during delivery is raised at the INT instruction (RIP is still there).
        return deliver(vector, errorCode: nil, returnRIP: insn.nextRIP, software: true)
    }

    /// CF IRET: real mode, and protected or long mode returning to the same
    /// privilege level (a return to an outer level needs the stack switch
    /// that is not modelled yet).
    mutating func executeIRET(_ insn: inout Instruction) -> Bool {
        // IRET ends NMI blocking even when it faults (Intel SDM 6.7.1).
        platform.nmiBlocked = false
        let size = insn.operandSize
        if case .real = state.mode {
            guard let ip = top(size: size), let cs = top(size: size, at: UInt64(size)),
                  let flags = top(size: size, at: UInt64(2 * size)) else { return false }
            commitPop(size: 3 * size)
            state.cs = .realMode(selector: UInt16(truncatingIfNeeded: cs), code: true)
            state.rip = ip & sizeMask(size)
            let kept = size == 2 ? state.rflags & ~0xFFFF : state.rflags & (RFLAGS.vm | 0x1A_0000)
            state.rflags = kept | (flags & (size == 2 ? 0xFFFF : ~(RFLAGS.vm | 0x1A_0000)))
            return true
        }
        guard state.flags.bits & RFLAGS.nt == 0 else {
            pending = .emulationFailure(address: linear(SegmentRegisterName.cs.rawValue, state.rip))
            return false
        }
        let long = insn.mode64
        guard let rip = top(size: size), let csValue = top(size: size, at: UInt64(size)),
              let flags = top(size: size, at: UInt64(2 * size)) else { return false }
        let selector = UInt16(truncatingIfNeeded: csValue)
        let cpl = state.privilegeLevel()
        let rpl = UInt8(selector & 3)
        guard rpl >= cpl else { return fault(.gp, errorCode: UInt32(selector & 0xFFFC)) }
        guard rpl == cpl else {
            pending = .emulationFailure(address: linear(SegmentRegisterName.cs.rawValue, state.rip))
            return false
        }
        var newRSP: UInt64 = 0
        var newSS: UInt16 = 0
        if long {
            guard let rsp = top(size: size, at: UInt64(3 * size)), let ss = top(size: size, at: UInt64(4 * size)) else { return false }
            newRSP = rsp
            newSS = UInt16(truncatingIfNeeded: ss)
        }
        guard let target = codeSegment(selector, external: false) else { return false }
        if long {
            guard loadSegment(SegmentRegisterName.ss.rawValue, selector: newSS) else { return false }
            state.setReg(4, size == 8 ? newRSP : newRSP & 0xFFFF_FFFF)
        } else {
            commitPop(size: 3 * size)
        }
        state.cs = target
        state.rip = rip & sizeMask(size)
        // At CPL 0 every flag is writable; above, IOPL stays and IF only at CPL <= IOPL.
        var writable = RFLAGS.writable & ~RFLAGS.vm
        if cpl > 0 { writable &= ~RFLAGS.iopl }
        if UInt64(cpl) > (state.flags.bits & RFLAGS.iopl) >> 12 { writable &= ~RFLAGS.if }
        if size == 2 { writable &= 0xFFFF }
        state.rflags = (state.rflags & ~writable) | (flags & writable)
        return true
    }
}

extension X86CPU {
    /// Whether an external interrupt would be taken now: IF is set and no
    /// STI or SS-load shadow covers this instruction boundary.
    public var interruptsEnabled: Bool { state.flags.bits & RFLAGS.if != 0 && !interruptShadow }

    /// Delivers external interrupt `vector` before the next instruction, as
    /// an interrupt controller's INTR does (or KVM's event injection, which
    /// does not look at IF). Returns nil when delivered, or the exit that
    /// delivery ended in (a shutdown, an emulation failure...).
    public mutating func deliverExternalInterrupt(_ vector: UInt8) -> X86Exit? {
        interruptShadow = false
        if deliver(vector, errorCode: nil, returnRIP: state.rip, software: false) { return nil }
        // A fault while delivering an interrupt is delivered in turn (an interrupt is benign).
        guard case .exception(let second, let errorCode) = pending else { return pending }
        return deliverException(second, errorCode: errorCode) ? nil : pending
    }
}
