// Exception and interrupt delivery through the IVT (real mode) or the IDT
// (protected and long mode: 16- and 32-bit gates, 64-bit gates with IST,
// stack switches through the TSS, task gates, interrupts from
// virtual-8086 mode), INT n and INT3. IRET is in FarTransfers.swift, task
// switches in TaskSwitch.swift, virtual-8086 mode's rules in Virtual8086.swift.

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
            // Not for #DB: its faults (instruction breakpoints, general
            // detect) leave RF clear, as KVM delivers them.
            if state.mode != .real && vector != Vector.db.rawValue { state.rflags |= RFLAGS.rf }
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

    /// Delivers one event through the IDT. `software` is INT n/INT3: the
    /// gate's DPL must allow the CPL, and the error code's EXT bit is clear.
    /// A gate to a more privileged non-conforming segment switches stacks:
    /// SS:ESP for the new CPL from the 32-bit (or 16-bit) TSS, or in long
    /// mode RSPn (or the gate's IST stack, used at any privilege) from the
    /// 64-bit TSS with SS null.
    mutating func deliver(_ vector: UInt8, errorCode: UInt32?, returnRIP: UInt64, software: Bool) -> Bool {
        if case .real = state.mode { return deliverReal(vector, returnRIP: returnRIP) }
        let fromV86 = state.flags.bits & RFLAGS.vm != 0
        let long = state.efer & ControlBits.eferLMA != 0
        let gateSize: UInt64 = long ? 16 : 8
        let entry = UInt64(vector) * gateSize
        let ext: UInt32 = software ? 0 : 1
        let idtErrorCode = UInt32(vector) << 3 | 2 | ext
        guard entry + gateSize - 1 <= UInt64(state.idtr.limit) else { return fault(.gp, errorCode: idtErrorCode) }
        guard let low = readSystem(state.idtr.base &+ entry, size: 8) else { return false }
        var gate = Descriptor(low: low)
        if long {
            guard let high = readSystem(state.idtr.base &+ entry &+ 8, size: 8) else { return false }
            gate.high = high
        }
        let type = gate.type
        guard gate.isSystem else { return fault(.gp, errorCode: idtErrorCode) }
        switch type {
        case 0xE, 0xF: break
        case 0x5...0x7 where !long: break
        default: return fault(.gp, errorCode: idtErrorCode)
        }
        let cpl = state.privilegeLevel()
        if software && gate.dpl < cpl { return fault(.gp, errorCode: idtErrorCode) }
        guard gate.isPresent else { return fault(.np, errorCode: idtErrorCode) }
        if type == 0x5 {
            return taskSwitch(to: gate.gateSelector, reason: .gate, errorCode: errorCode, ext: ext,
                              returnRIP: returnRIP)
        }
        let selector = gate.gateSelector
        guard selector & 0xFFFC != 0 else { return fault(.gp, errorCode: ext) }
        let targetErrorCode = UInt32(selector & 0xFFFC) | ext
        guard let (found, address) = readDescriptor(selector, ext: ext) else { return false }
        var target = found
        guard target.isCode, target.dpl <= cpl else { return fault(.gp, errorCode: targetErrorCode) }
        if long && (!target.isLong || target.isDefaultBig) { return fault(.gp, errorCode: targetErrorCode) }
        // From virtual-8086 mode only to a non-conforming segment of DPL 0.
        if fromV86 && (target.isConforming || target.dpl != 0) { return fault(.gp, errorCode: targetErrorCode) }
        guard target.isPresent else { return fault(.np, errorCode: targetErrorCode) }
        let gate16 = !long && type & 8 == 0
        var offset = gate.gateOffset
        if gate16 { offset &= 0xFFFF } else if !long { offset &= 0xFFFF_FFFF }
        if !long && offset > UInt64(target.limit) { return fault(.gp, errorCode: ext) }
        if long {
            let top = Int64(bitPattern: offset) >> 47
            guard top == 0 || top == -1 else { return fault(.gp, errorCode: ext) }
        }
        let newCPL = target.isConforming ? cpl : target.dpl
        let flags = state.rflags
        let wordSize = long ? 8 : (gate16 ? 2 : 4)
        var words = FrameWords(repeating: 0)
        var count = 0
        var newSS = state.ss
        var top = state.reg(4)
        if newCPL < cpl || (long && (low >> 32) & 7 != 0) {
            if long {
                let ist = Int((low >> 32) & 7)
                guard let rsp = readTSS64(ist != 0 ? 0x1C + 8 * ist : 4 + 8 * Int(newCPL), ext: ext) else { return false }
                top = rsp
                if newCPL < cpl { newSS = Self.nullSegment(UInt16(newCPL), dpl: newCPL) }
            } else {
                guard let (ss, esp) = innerStack(newCPL, ext: ext) else { return false }
                newSS = ss
                top = esp
            }
        }
        if fromV86 {
            // GS FS DS ES first, then the frame of a privilege change.
            words[0] = UInt64(state.gs.selector)
            words[1] = UInt64(state.fs.selector)
            words[2] = UInt64(state.ds.selector)
            words[3] = UInt64(state.es.selector)
            count = 4
        }
        // Long mode always pushes SS:RSP; elsewhere only a stack switch does.
        if newCPL < cpl || long {
            words[count] = UInt64(state.ss.selector)
            words[count + 1] = state.reg(4)
            count += 2
        }
        words[count] = flags
        words[count + 1] = UInt64(state.cs.selector)
        words[count + 2] = returnRIP
        count += 3
        if let errorCode {
            words[count] = UInt64(errorCode)
            count += 1
        }
        if long {
            let canonical = Int64(bitPattern: top) >> 47
            guard canonical == 0 || canonical == -1 else { return fault(.ss, errorCode: ext) }
            top &= ~0xF
        }
        let stackErrorCode = newCPL < cpl && !long ? UInt32(newSS.selector & 0xFFFC) | ext : ext
        guard let newTop = pushFrame(words, count: count, size: wordSize, ss: newSS, top: top, long: long,
                                     supervisor: newCPL < 3, errorCode: stackErrorCode) else { return false }
        guard markAccessed(&target, at: address) else { return false }
        var cleared = RFLAGS.tf | RFLAGS.nt | RFLAGS.rf | RFLAGS.vm
        if type & 1 == 0 { cleared |= RFLAGS.if }
        state.rflags = flags & ~cleared
        state.ss = newSS
        setStackPointer(newTop, ss: newSS, long: long)
        state.cs = target.segment(selector: (selector & 0xFFFC) | UInt16(newCPL))
        state.rip = offset
        if fromV86 {
            (state.es, state.ds, state.fs, state.gs) = (Self.nullSegment(0), Self.nullSegment(0), Self.nullSegment(0), Self.nullSegment(0))
        }
        return true
    }

    /// RSP (64-bit mode) or ESP/SP as the stack's B bit says.
    mutating func setStackPointer(_ value: UInt64, ss: SegmentRegister, long: Bool) {
        if long {
            state.setReg(4, value)
        } else if ss.isDefaultBig {
            state.setReg(4, value & 0xFFFF_FFFF)
        } else {
            state.write(4, value, size: 2, legacyHighBytes: false)
        }
    }

    /// Pushes `count` words of `size` bytes, in push order, below `top` on
    /// the stack `ss` (64-bit when `long`, else as its B bit says), as a
    /// supervisor or user access. Returns the new stack pointer, or nil
    /// with the fault stored: #SS(`errorCode`) when the frame does not fit
    /// the segment or is not canonical, a page fault from the writes.
    mutating func pushFrame(_ words: FrameWords, count: Int, size: Int, ss: SegmentRegister, top: UInt64,
                            long: Bool, supervisor: Bool, errorCode: UInt32) -> UInt64? {
        let mask: UInt64 = long ? ~0 : (ss.isDefaultBig ? 0xFFFF_FFFF : 0xFFFF)
        let total = UInt64(count * size)
        let newTop = (top &- total) & mask
        let base: UInt64
        if long {
            let low = Int64(bitPattern: newTop) >> 47, high = Int64(bitPattern: newTop &+ total &- 1) >> 47
            guard (low == 0 || low == -1) && (high == 0 || high == -1) else {
                _ = fault(.ss, errorCode: errorCode)
                return nil
            }
            base = 0
        } else {
            guard segmentAllows(ss, newTop, size: Int(total), write: true) else {
                _ = fault(.ss, errorCode: errorCode)
                return nil
            }
            base = ss.base
        }
        let saved = implicitSupervisor
        implicitSupervisor = supervisor
        defer { implicitSupervisor = saved }
        for i in 0..<count {
            let offset = (top &- UInt64((i + 1) * size)) & mask
            let address = long ? offset : (base &+ offset) & 0xFFFF_FFFF
            guard writeLinear(address, words[i] & sizeMask(size), size: size) else { return nil }
        }
        return newTop
    }

    /// An 8-byte field of the 64-bit TSS (RSPn at 4 + 8n, ISTn at 0x1C + 8n):
    /// #TS(TR selector) when it lies beyond TR's limit.
    mutating func readTSS64(_ offset: Int, ext: UInt32) -> UInt64? {
        guard UInt64(offset + 7) <= UInt64(state.tr.limit), state.tr.isPresent else {
            _ = fault(.ts, errorCode: UInt32(state.tr.selector & 0xFFFC) | ext)
            return nil
        }
        return readSystem(state.tr.base &+ UInt64(offset), size: 8)
    }

    /// SS:ESP for privilege level `dpl` from the 32-bit TSS (SS0:ESP0 at
    /// 4, 8 + 8n) or 16-bit TSS (SS0:SP0 at 2, 4 + 4n), with the stack
    /// segment's checks: #TS for a bad selector or descriptor, #SS when it
    /// is not present (SDM INT, CALL).
    mutating func innerStack(_ dpl: UInt8, ext: UInt32) -> (SegmentRegister, UInt64)? {
        let tssErrorCode = UInt32(state.tr.selector & 0xFFFC) | ext
        let tss32 = state.tr.attributes & 8 != 0
        let spOffset = tss32 ? 4 + 8 * Int(dpl) : 2 + 4 * Int(dpl)
        let spSize = tss32 ? 4 : 2
        guard UInt64(spOffset + spSize * 2 - 1) <= UInt64(state.tr.limit), state.tr.isPresent else {
            _ = fault(.ts, errorCode: tssErrorCode)
            return nil
        }
        guard let sp = readSystem(state.tr.base &+ UInt64(spOffset), size: spSize),
              let ssValue = readSystem(state.tr.base &+ UInt64(spOffset + spSize), size: 2) else { return nil }
        let selector = UInt16(truncatingIfNeeded: ssValue)
        let errorCode = UInt32(selector & 0xFFFC) | ext
        guard selector & 0xFFFC != 0 else {
            _ = fault(.ts, errorCode: ext)
            return nil
        }
        guard UInt8(selector & 3) == dpl else {
            _ = fault(.ts, errorCode: errorCode)
            return nil
        }
        guard let (found, address) = readDescriptor(selector, vector: .ts, ext: ext) else { return nil }
        var descriptor = found
        guard descriptor.dpl == dpl, descriptor.isWritableData else {
            _ = fault(.ts, errorCode: errorCode)
            return nil
        }
        guard descriptor.isPresent else {
            _ = fault(.ss, errorCode: errorCode)
            return nil
        }
        guard markAccessed(&descriptor, at: address) else { return nil }
        return (descriptor.segment(selector: selector), sp)
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

    /// CC INT3, CD INT n: traps, so the return address is the next instruction.
    mutating func executeSoftwareInterrupt(_ insn: inout Instruction) -> Bool {
        let vector = insn.opcode == 0xCC ? Vector.bp.rawValue : UInt8(truncatingIfNeeded: insn.immediate)
        // INT n (not INT3) is IOPL-sensitive in virtual-8086 mode.
        if insn.opcode == 0xCD && state.flags.bits & RFLAGS.vm != 0 { return softwareInterruptInVirtual8086(vector, insn) }
        // A fault during delivery is raised at the INT instruction (RIP is still there).
        return deliver(vector, errorCode: nil, returnRIP: insn.nextRIP, software: true)
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
        if deliver(vector, errorCode: nil, returnRIP: state.rip, software: false) { return ownerStepAfterEvent() }
        // A fault while delivering an interrupt is delivered in turn (an interrupt is benign).
        guard case .exception(let second, let errorCode) = pending else { return pending }
        return deliverException(second, errorCode: errorCode) ? ownerStepAfterEvent() : pending
    }

    /// An owner single-stepping stops at the handler an event was delivered to.
    mutating func ownerStepAfterEvent() -> X86Exit? {
        hostDebug.singleStep ? ownerDebugStop(DR6.bs) : nil
    }
}
