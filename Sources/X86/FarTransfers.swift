// Far transfers: JMP and CALL to a code segment or through a call gate
// (16-, 32- and 64-bit, with the stack switch and parameter copy of a call
// to a more privileged level), far RET and IRET to the same or an outer
// level, with the SDM's descriptor checks and error codes. Task switches
// (a TSS or task gate as target, IRET with NT) are in TaskSwitch.swift.

/// The words of a frame pushed at once: a call gate copies up to 31
/// parameters besides SS, ESP, CS and EIP.
typealias FrameWords = InlineArray<40, UInt64>

extension X86CPU {
    // MARK: Decoding the target

    /// The offset and selector of EA/9A (ptr16:16/32) or FF /3, /5 (m16:16/32/64).
    mutating func farPointer(_ insn: Instruction) -> (offset: UInt64, selector: UInt16)? {
        if insn.opcode == 0xEA || insn.opcode == 0x9A {
            guard !insn.mode64 else {
                _ = undefined()
                return nil
            }
            let offsetSize = insn.operandSize == 2 ? 2 : 4
            return (insn.immediate & sizeMask(offsetSize), UInt16(truncatingIfNeeded: insn.immediate >> UInt64(offsetSize * 8)))
        }
        guard insn.isMemory else {
            _ = undefined()
            return nil
        }
        let offsetSize = insn.operandSize
        guard let offset = read(insn.segment, insn.offset, size: offsetSize),
              let selector = read(insn.segment, (insn.offset &+ UInt64(offsetSize)) & sizeMask(insn.addressSize), size: 2)
        else { return nil }
        return (offset, UInt16(truncatingIfNeeded: selector))
    }

    /// EA JMP ptr16:16/32 and FF /5 JMP m16:16/32/64.
    mutating func executeFarJump(_ insn: inout Instruction) -> Bool {
        guard let (offset, selector) = farPointer(insn) else { return false }
        if state.cr0 & ControlBits.cr0PE == 0 || state.flags.bits & RFLAGS.vm != 0 {
            // SDM JMP: "IF tempEIP is beyond code segment limit THEN #GP(0)".
            guard offset & sizeMask(insn.operandSize) <= UInt64(state.cs.limit) else { return fault(.gp, errorCode: 0) }
            state.cs = realStyleSegment(selector, code: true)
            state.rip = offset & sizeMask(insn.operandSize)
            return true
        }
        return farTransfer(selector: selector, offset: offset, call: false, insn)
    }

    /// 9A CALL ptr16:16/32 and FF /3 CALL m16:16/32/64.
    mutating func executeFarCall(_ insn: inout Instruction) -> Bool {
        guard let (offset, selector) = farPointer(insn) else { return false }
        let size = insn.operandSize
        if state.cr0 & ControlBits.cr0PE == 0 || state.flags.bits & RFLAGS.vm != 0 {
            // SDM CALL: "IF tempEIP not within code segment limit THEN #GP(0)".
            guard offset & sizeMask(size) <= UInt64(state.cs.limit) else { return fault(.gp, errorCode: 0) }
            let saved = state.reg(4)
            guard push(UInt64(state.cs.selector), size: size), push(insn.nextRIP, size: size) else {
                state.setReg(4, saved)
                return false
            }
            state.cs = realStyleSegment(selector, code: true)
            state.rip = offset & sizeMask(size)
            return true
        }
        return farTransfer(selector: selector, offset: offset, call: true, insn)
    }

    /// A protected-mode far JMP or CALL: to a code segment at the same
    /// privilege, through a call gate, or to a task.
    mutating func farTransfer(selector: UInt16, offset: UInt64, call: Bool, _ insn: Instruction) -> Bool {
        guard selector & 0xFFFC != 0 else { return fault(.gp, errorCode: 0) }
        let errorCode = UInt32(selector & 0xFFFC)
        let long = state.efer & ControlBits.eferLMA != 0
        guard let (found, address) = readDescriptor(selector) else { return false }
        var descriptor = found
        let cpl = state.privilegeLevel()
        let rpl = UInt8(selector & 3)
        if !descriptor.isSystem {
            guard descriptor.isCode else { return fault(.gp, errorCode: errorCode) }
            if descriptor.isConforming ? descriptor.dpl > cpl : (rpl > cpl || descriptor.dpl != cpl) {
                return fault(.gp, errorCode: errorCode)
            }
            guard descriptor.isPresent else { return fault(.np, errorCode: errorCode) }
            if long && descriptor.isLong && descriptor.isDefaultBig { return fault(.gp, errorCode: errorCode) }
            let to64 = long && descriptor.isLong
            let target = to64 ? offset : offset & sizeMask(insn.operandSize)
            guard checkTarget(target, descriptor, to64: to64) else { return false }
            if call {
                let size = insn.operandSize
                let saved = state.reg(4)
                guard push(UInt64(state.cs.selector), size: size), push(insn.nextRIP, size: size) else {
                    state.setReg(4, saved)
                    return false
                }
            }
            guard markAccessed(&descriptor, at: address) else { return false }
            state.cs = descriptor.segment(selector: (selector & 0xFFFC) | UInt16(cpl))
            state.rip = target
            return true
        }
        switch descriptor.type {
        case 0x4 where !long, 0xC:
            return callGate(selector, descriptor, call: call, insn)
        case 0x1, 0x5, 0x9:
            // No task switches in IA-32e mode.
            guard !long else { return fault(.gp, errorCode: errorCode) }
            return taskSwitch(to: selector, reason: call ? .call : .jump, errorCode: nil, ext: 0, returnRIP: insn.nextRIP)
        default:
            return fault(.gp, errorCode: errorCode)
        }
    }

    /// A new RIP must be canonical (64-bit code) or within the segment's limit: #GP(0).
    mutating func checkTarget(_ rip: UInt64, _ descriptor: Descriptor, to64: Bool) -> Bool {
        if to64 {
            let top = Int64(bitPattern: rip) >> 47
            return top == 0 || top == -1 ? true : fault(.gp, errorCode: 0)
        }
        return rip <= UInt64(descriptor.limit) ? true : fault(.gp, errorCode: 0)
    }

    /// JMP or CALL through a call gate. A CALL to a more privileged
    /// non-conforming segment takes the inner stack from the TSS and pushes
    /// the caller's SS and rSP, the gate's parameter count of words from
    /// the caller's stack (not in long mode), CS and rIP.
    mutating func callGate(_ gateSelector: UInt16, _ legacyGate: Descriptor, call: Bool, _ insn: Instruction) -> Bool {
        let gateErrorCode = UInt32(gateSelector & 0xFFFC)
        let long = state.efer & ControlBits.eferLMA != 0
        var gate = legacyGate
        if long {
            // A 16-byte gate whose upper type field must be 0.
            guard let (wide, _) = readDescriptor(gateSelector, wide: true) else { return false }
            gate = wide
            if (gate.high >> 40) & 0x1F != 0 { return fault(.gp, errorCode: gateErrorCode) }
        }
        let cpl = state.privilegeLevel()
        let rpl = UInt8(gateSelector & 3)
        if gate.dpl < cpl || gate.dpl < rpl { return fault(.gp, errorCode: gateErrorCode) }
        guard gate.isPresent else { return fault(.np, errorCode: gateErrorCode) }
        let selector = gate.gateSelector
        guard selector & 0xFFFC != 0 else { return fault(.gp, errorCode: 0) }
        let errorCode = UInt32(selector & 0xFFFC)
        guard let (found, address) = readDescriptor(selector) else { return false }
        var target = found
        guard target.isCode, target.dpl <= cpl else { return fault(.gp, errorCode: errorCode) }
        if long && (!target.isLong || target.isDefaultBig) { return fault(.gp, errorCode: errorCode) }
        if !call && !target.isConforming && target.dpl != cpl { return fault(.gp, errorCode: errorCode) }
        guard target.isPresent else { return fault(.np, errorCode: errorCode) }
        let wordSize = long ? 8 : (gate.type == 0x4 ? 2 : 4)
        let offset = long ? gate.gateOffset : gate.gateOffset & sizeMask(wordSize)
        guard checkTarget(offset, target, to64: long) else { return false }
        let newCPL = call && !target.isConforming ? target.dpl : cpl
        var words = FrameWords(repeating: 0)
        var count = 0
        if newCPL < cpl {
            let newSS: SegmentRegister
            let top: UInt64
            if long {
                guard let rsp = readTSS64(4 + 8 * Int(newCPL), ext: 0) else { return false }
                newSS = Self.nullSegment(UInt16(newCPL), dpl: newCPL)
                top = rsp
            } else {
                guard let (ss, esp) = innerStack(newCPL, ext: 0) else { return false }
                newSS = ss
                top = esp
            }
            words[0] = UInt64(state.ss.selector)
            words[1] = state.reg(4)
            count = 2
            if !long {
                // Parameters in the caller's order: the last pushed (lowest) stays lowest.
                let parameters = gate.gateParameterCount
                for i in stride(from: parameters - 1, through: 0, by: -1) {
                    let at = (state.reg(4) &+ UInt64(i * wordSize)) & sizeMask(stackAddressSize)
                    guard let value = read(SegmentRegisterName.ss.rawValue, at, size: wordSize) else { return false }
                    words[count] = value
                    count += 1
                }
            }
            words[count] = UInt64(state.cs.selector)
            words[count + 1] = insn.nextRIP
            count += 2
            guard let newTop = pushFrame(words, count: count, size: wordSize, ss: newSS, top: top, long: long,
                                         supervisor: newCPL < 3, errorCode: long ? 0 : UInt32(newSS.selector & 0xFFFC)),
                  markAccessed(&target, at: address) else { return false }
            state.ss = newSS
            setStackPointer(newTop, ss: newSS, long: long)
        } else {
            if call {
                words[0] = UInt64(state.cs.selector)
                words[1] = insn.nextRIP
                guard let newTop = pushFrame(words, count: 2, size: wordSize, ss: state.ss, top: state.reg(4),
                                             long: state.mode == .long64, supervisor: cpl < 3, errorCode: 0) else { return false }
                setStackPointer(newTop, ss: state.ss, long: state.mode == .long64)
            }
            guard markAccessed(&target, at: address) else { return false }
        }
        state.cs = target.segment(selector: (selector & 0xFFFC) | UInt16(newCPL))
        state.rip = offset
        return true
    }

    // MARK: Returns

    /// The code segment a far RET or IRET returns to (SDM RET, IRET): #GP
    /// for a null selector, one beyond its table, not code, RPL below CPL,
    /// a DPL that does not match; #NP when not present.
    mutating func returnCodeSegment(_ selector: UInt16) -> (Descriptor, UInt64)? {
        guard selector & 0xFFFC != 0 else {
            _ = fault(.gp, errorCode: 0)
            return nil
        }
        let errorCode = UInt32(selector & 0xFFFC)
        guard let (descriptor, address) = readDescriptor(selector) else { return nil }
        let rpl = UInt8(selector & 3)
        let bad = !descriptor.isCode || rpl < state.privilegeLevel()
            || (descriptor.isConforming ? descriptor.dpl > rpl : descriptor.dpl != rpl)
            || (state.efer & ControlBits.eferLMA != 0 && descriptor.isLong && descriptor.isDefaultBig)
        if bad {
            _ = fault(.gp, errorCode: errorCode)
            return nil
        }
        guard descriptor.isPresent else {
            _ = fault(.np, errorCode: errorCode)
            return nil
        }
        return (descriptor, address)
    }

    /// The stack segment a return to privilege `rpl` loads: null only when
    /// returning to 64-bit code at CPL < 3 (#GP(0) otherwise); #GP(selector)
    /// for a mismatched RPL or DPL or a segment that is not writable data;
    /// #SS(selector) when not present.
    mutating func returnStackSegment(_ selector: UInt16, rpl: UInt8, to64: Bool) -> SegmentRegister? {
        if selector & 0xFFFC == 0 {
            guard to64 && rpl != 3 else {
                _ = fault(.gp, errorCode: 0)
                return nil
            }
            return Self.nullSegment(selector, dpl: rpl)
        }
        let errorCode = UInt32(selector & 0xFFFC)
        guard UInt8(selector & 3) == rpl else {
            _ = fault(.gp, errorCode: errorCode)
            return nil
        }
        guard let (found, address) = readDescriptor(selector) else { return nil }
        var descriptor = found
        guard descriptor.isWritableData, descriptor.dpl == rpl else {
            _ = fault(.gp, errorCode: errorCode)
            return nil
        }
        guard descriptor.isPresent else {
            _ = fault(.ss, errorCode: errorCode)
            return nil
        }
        guard markAccessed(&descriptor, at: address) else { return nil }
        return descriptor.segment(selector: selector)
    }

    /// CB RETF, CA RETF imm16: to the same privilege level, or to an outer
    /// one, popping SS:rSP as well (the immediate is released from both stacks).
    mutating func executeFarReturn(_ insn: inout Instruction) -> Bool {
        let size = insn.operandSize
        let release = insn.opcode == 0xCA ? insn.immediate & 0xFFFF : 0
        guard let ip = top(size: size), let csValue = top(size: size, at: UInt64(size)) else { return false }
        let selector = UInt16(truncatingIfNeeded: csValue)
        if state.cr0 & ControlBits.cr0PE == 0 || state.flags.bits & RFLAGS.vm != 0 {
            commitPop(size: 2 * size + Int(release))
            state.cs = realStyleSegment(selector, code: true)
            state.rip = ip & sizeMask(size)
            return true
        }
        let cpl = state.privilegeLevel()
        guard let (found, address) = returnCodeSegment(selector) else { return false }
        var descriptor = found
        let rpl = UInt8(selector & 3)
        let long = state.efer & ControlBits.eferLMA != 0
        let to64 = long && descriptor.isLong
        let rip = to64 ? ip : ip & 0xFFFF_FFFF
        guard checkTarget(rip, descriptor, to64: to64) else { return false }
        if rpl == cpl {
            guard markAccessed(&descriptor, at: address) else { return false }
            commitPop(size: 2 * size + Int(release))
            state.cs = descriptor.segment(selector: selector)
            state.rip = rip
            return true
        }
        let depth = UInt64(2 * size) + release
        guard let rsp = top(size: size, at: depth), let ssValue = top(size: size, at: depth + UInt64(size)),
              let newSS = returnStackSegment(UInt16(truncatingIfNeeded: ssValue), rpl: rpl, to64: to64),
              markAccessed(&descriptor, at: address) else { return false }
        state.cs = descriptor.segment(selector: selector)
        state.rip = rip
        state.ss = newSS
        let stackMask: UInt64 = long ? ~0 : (newSS.isDefaultBig ? 0xFFFF_FFFF : 0xFFFF)
        setStackPointer((rsp &+ release) & stackMask, ss: newSS, long: long)
        invalidateDataSegments(newCPL: rpl)
        return true
    }

    /// CF IRET: real mode; protected and long mode to the same or an outer
    /// privilege level (64-bit mode always pops SS:RSP); with NT set, a
    /// return from a nested task.
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
        if state.flags.bits & RFLAGS.vm != 0 { return iretInVirtual8086(insn) }
        let long = state.efer & ControlBits.eferLMA != 0
        if state.flags.bits & RFLAGS.nt != 0 {
            if long { return fault(.gp, errorCode: 0) }
            return taskReturn(insn)
        }
        guard let ip = top(size: size), let csValue = top(size: size, at: UInt64(size)),
              let flags = top(size: size, at: UInt64(2 * size)) else { return false }
        let cpl = state.privilegeLevel()
        if !long && flags & RFLAGS.vm != 0 && cpl == 0 && size == 4 {
            return iretToVirtual8086(ip: ip, cs: csValue, flags: flags)
        }
        let selector = UInt16(truncatingIfNeeded: csValue)
        guard let (found, address) = returnCodeSegment(selector) else { return false }
        var descriptor = found
        let rpl = UInt8(selector & 3)
        let to64 = long && descriptor.isLong
        let rip = to64 ? ip : ip & 0xFFFF_FFFF
        guard checkTarget(rip, descriptor, to64: to64) else { return false }
        let popsStack = rpl > cpl || insn.mode64
        var newSS = state.ss
        var newRSP: UInt64 = 0
        if popsStack {
            guard let rsp = top(size: size, at: UInt64(3 * size)), let ssValue = top(size: size, at: UInt64(4 * size)),
                  let ss = returnStackSegment(UInt16(truncatingIfNeeded: ssValue), rpl: rpl, to64: to64) else { return false }
            newSS = ss
            newRSP = rsp
        }
        guard markAccessed(&descriptor, at: address) else { return false }
        // At CPL 0 every flag is writable; above, IOPL, VIF and VIP stay and IF only at CPL <= IOPL.
        var writable = RFLAGS.writable & ~RFLAGS.vm
        if cpl > 0 { writable &= ~(RFLAGS.iopl | RFLAGS.vif | RFLAGS.vip) }
        if UInt64(cpl) > (state.flags.bits & RFLAGS.iopl) >> 12 { writable &= ~RFLAGS.if }
        if size == 2 { writable &= 0xFFFF }
        let newFlags = (state.rflags & ~writable) | (flags & writable)
        if popsStack {
            state.ss = newSS
            setStackPointer(size == 2 ? newRSP & 0xFFFF : newRSP, ss: newSS, long: long)
        } else {
            commitPop(size: 3 * size)
        }
        state.cs = descriptor.segment(selector: selector)
        state.rip = rip
        state.rflags = newFlags
        if rpl > cpl { invalidateDataSegments(newCPL: rpl) }
        return true
    }
}
