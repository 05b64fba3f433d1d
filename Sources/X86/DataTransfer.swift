// MOV (all forms), MOVZX/MOVSX/MOVSXD, CMOVcc, XCHG, PUSH/POP, LEAVE,
// CBW/CWDE/CDQE/CWD/CDQ/CQO, segment register loads.

extension X86CPU {
    mutating func executeMove(_ insn: inout Instruction) -> Bool {
        let op = insn.opcode
        let size = insn.operandSize
        switch op {
        case 0x88, 0x89:
            let s = op == 0x88 ? 1 : size
            return writeOperand(insn, readRegister(insn, size: s), size: s)
        case 0x8A, 0x8B:
            let s = op == 0x8A ? 1 : size
            guard let value = readOperand(insn, size: s) else { return false }
            writeRegister(insn, value, size: s)
        case 0x8C:  // MOV Ev, Sreg: a register destination takes the operand size, memory 16 bits
            guard insn.reg & 7 < 6 else { return undefined() }
            let selector = UInt64(state[segmentIndex: insn.reg & 7].selector)
            return writeOperand(insn, selector, size: insn.isMemory ? 2 : size)
        case 0x8E:
            let target = insn.reg & 7
            guard target < 6 && target != SegmentRegisterName.cs.rawValue else { return undefined() }
            guard let selector = readOperand(insn, size: 2) else { return false }
            guard loadSegment(target, selector: UInt16(truncatingIfNeeded: selector)) else { return false }
            if target == SegmentRegisterName.ss.rawValue { interruptShadowKind = InterruptShadow.ssLoad }
            return true
        case 0xA0...0xA3:  // moffs
            let s = op & 1 == 0 ? 1 : size
            let segment = insn.segmentOverride >= 0 ? insn.segmentOverride : SegmentRegisterName.ds.rawValue
            let offset = insn.immediate & sizeMask(insn.addressSize)
            if op <= 0xA1 {
                guard let value = read(segment, offset, size: s) else { return false }
                state.write(0, value, size: s, legacyHighBytes: false)
            } else {
                return write(segment, offset, state.read(0, size: s, legacyHighBytes: false), size: s)
            }
        case 0xB0...0xB7:
            state.write((op & 7) | (insn.rex & 1 != 0 ? 8 : 0), insn.immediate, size: 1, legacyHighBytes: insn.legacyHighBytes)
        case 0xB8...0xBF:
            state.write((op & 7) | (insn.rex & 1 != 0 ? 8 : 0), insn.immediate, size: size, legacyHighBytes: false)
        case 0xC6, 0xC7:
            guard insn.reg & 7 == 0 else { return undefined() }
            let s = op == 0xC6 ? 1 : size
            return writeOperand(insn, signExtend(insn.immediate, size: min(s, 4)), size: s)
        case 0x1B6, 0x1B7, 0x1BE, 0x1BF:
            let s = op & 1 == 0 ? 1 : 2
            guard let value = readOperand(insn, size: s) else { return false }
            writeRegister(insn, op >= 0x1BE ? signExtend(value, size: s) : value, size: size)
        case 0x63:  // MOVSXD in 64-bit mode; ARPL elsewhere (not implemented)
            guard insn.mode64 else { return undefined() }
            guard let value = readOperand(insn, size: 4) else { return false }
            writeRegister(insn, size == 8 ? signExtend(value, size: 4) : value, size: size)
        default:  // 0F 40-4F CMOVcc: the source is read (and can fault) either way
            guard let value = readOperand(insn, size: size) else { return false }
            if state.flags.condition(op & 0xF) {
                writeRegister(insn, value, size: size)
            } else if size == 4 {
                writeRegister(insn, readRegister(insn, size: 4), size: 4)
            }
        }
        return true
    }

    /// 86 87 (XCHG Eb/Ev, G) and 91-97 (XCHG rAX, r).
    mutating func executeExchange(_ insn: inout Instruction) -> Bool {
        if insn.opcode >= 0x90 {
            let other = (insn.opcode & 7) | (insn.rex & 1 != 0 ? 8 : 0)
            let size = insn.operandSize
            let a = state.read(0, size: size, legacyHighBytes: false)
            let b = state.read(other, size: size, legacyHighBytes: false)
            state.write(0, b, size: size, legacyHighBytes: false)
            state.write(other, a, size: size, legacyHighBytes: false)
            return true
        }
        let size = insn.opcode == 0x86 ? 1 : insn.operandSize
        guard let a = readOperand(insn, size: size) else { return false }
        let b = readRegister(insn, size: size)
        guard writeOperand(insn, b, size: size) else { return false }
        writeRegister(insn, a, size: size)
        return true
    }

    /// 98: CBW/CWDE/CDQE; 99: CWD/CDQ/CQO.
    mutating func executeConvert(_ insn: inout Instruction) {
        let size = insn.operandSize
        if insn.opcode == 0x98 {
            let half = size / 2
            state.write(0, signExtend(state.read(0, size: half, legacyHighBytes: false), size: half), size: size, legacyHighBytes: false)
        } else {
            let negative = state.read(0, size: size, legacyHighBytes: false) & signBit(size) != 0
            state.write(2, negative ? ~0 : 0, size: size, legacyHighBytes: false)
        }
    }

    // MARK: Stack

    /// The operand size of PUSH/POP: 8 or 2 in 64-bit mode (no 32-bit push).
    func stackOperandSize(_ insn: Instruction) -> Int {
        if insn.mode64 { return insn.operandSizePrefix ? 2 : 8 }
        return insn.operandSize
    }

    mutating func push(_ value: UInt64, size: Int) -> Bool {
        let addressSize = stackAddressSize
        let rsp = (state.reg(4) &- UInt64(size)) & sizeMask(addressSize)
        guard write(SegmentRegisterName.ss.rawValue, rsp, value, size: size) else { return false }
        state.write(4, rsp, size: addressSize, legacyHighBytes: false)
        return true
    }

    /// Reads the top of the stack; `commitPop` then moves RSP, so that a
    /// fault in between leaves RSP unchanged.
    mutating func top(size: Int, at depth: UInt64 = 0) -> UInt64? {
        let addressSize = stackAddressSize
        return read(SegmentRegisterName.ss.rawValue, (state.reg(4) &+ depth) & sizeMask(addressSize), size: size)
    }

    mutating func commitPop(size: Int) {
        let addressSize = stackAddressSize
        state.write(4, (state.reg(4) &+ UInt64(size)) & sizeMask(addressSize), size: addressSize, legacyHighBytes: false)
    }

    mutating func pop(size: Int) -> UInt64? {
        guard let value = top(size: size) else { return nil }
        commitPop(size: size)
        return value
    }

    /// 50-5F, 68, 6A, 8F /0, FF /6.
    mutating func executePushPop(_ insn: inout Instruction) -> Bool {
        let size = stackOperandSize(insn)
        switch insn.opcode {
        case 0x50...0x57:
            let index = (insn.opcode & 7) | (insn.rex & 1 != 0 ? 8 : 0)
            return push(state.read(index, size: size, legacyHighBytes: false), size: size)
        case 0x58...0x5F:
            let index = (insn.opcode & 7) | (insn.rex & 1 != 0 ? 8 : 0)
            guard let value = pop(size: size) else { return false }
            state.write(index, value, size: size, legacyHighBytes: false)
            return true
        case 0x68:
            return push(signExtend(insn.immediate, size: min(size, 4)), size: size)
        case 0x6A:
            return push(signExtend(insn.immediate, size: 1), size: size)
        case 0x8F:
            guard insn.reg & 7 == 0 else { return undefined() }
            guard let value = top(size: size) else { return false }
            // The destination's address uses the incremented RSP (SDM POP).
            let saved = state.reg(4)
            commitPop(size: size)
            if insn.isMemory && insn.stackPointerBase {
                var adjusted = insn
                adjusted.offset = (insn.offset &+ UInt64(size)) & sizeMask(insn.addressSize)
                guard writeOperand(adjusted, value, size: size) else { state.setReg(4, saved); return false }
                return true
            }
            guard writeOperand(insn, value, size: size) else { state.setReg(4, saved); return false }
            return true
        default:  // FF /6
            guard let value = readOperand(insn, size: size) else { return false }
            return push(value, size: size)
        }
    }

    /// C9: LEAVE.
    mutating func executeLeave(_ insn: inout Instruction) -> Bool {
        let size = stackOperandSize(insn)
        let saved = state.reg(4)
        state.write(4, state.reg(5), size: stackAddressSize, legacyHighBytes: false)
        guard let value = pop(size: size) else { state.setReg(4, saved); return false }
        state.write(5, value, size: size, legacyHighBytes: false)
        return true
    }

    /// PUSH/POP ES CS SS DS (06 07 0E 16 17 1E 1F) and FS GS (0F A0 A1 A8 A9).
    mutating func executeSegmentPushPop(_ insn: inout Instruction) -> Bool {
        let size = stackOperandSize(insn)
        let segment: Int
        switch insn.opcode {
        case 0x06, 0x07: segment = 0
        case 0x0E: segment = 1
        case 0x16, 0x17: segment = 2
        case 0x1E, 0x1F: segment = 3
        case 0x1A0, 0x1A1: segment = 4
        default: segment = 5
        }
        let isPush = insn.opcode & 1 == 0 || insn.opcode == 0x0E
        if isPush { return push(UInt64(state[segmentIndex: segment].selector), size: size) }
        guard let value = top(size: size) else { return false }
        guard loadSegment(segment, selector: UInt16(truncatingIfNeeded: value)) else { return false }
        commitPop(size: size)
        if segment == SegmentRegisterName.ss.rawValue { interruptShadowKind = InterruptShadow.ssLoad }
        return true
    }

    /// Loads a data or stack segment register (Segmentation.swift has the checks).
    mutating func loadSegment(_ segment: Int, selector: UInt16) -> Bool {
        loadDataSegment(segment, selector: selector)
    }
}
