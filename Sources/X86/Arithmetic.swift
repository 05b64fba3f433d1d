// ADD OR ADC SBB AND SUB XOR CMP, group 1, TEST, INC/DEC, NEG/NOT,
// MUL/IMUL/DIV/IDIV, shifts and rotates.

extension X86CPU {
    /// The eight ALU operations, numbered as in the opcode (bits 3-5) and in
    /// group 1's reg field. Returns the result; CMP's is not written back.
    @inline(always)
    mutating func alu(_ operation: Int, _ dst: UInt64, _ src: UInt64, size: Int) -> UInt64 {
        let mask = sizeMask(size)
        switch operation {
        case 0:
            let r = (dst &+ src) & mask
            state.flags.record(.add, size: size, dst: dst, src: src, result: r)
            return r
        case 1:
            let r = (dst | src) & mask
            state.flags.record(.logic, size: size, dst: dst, src: src, result: r)
            return r
        case 2:
            let carry = state.flags.carry
            let r = (dst &+ src &+ (carry ? 1 : 0)) & mask
            state.flags.record(.add, size: size, dst: dst, src: src, result: r, carryIn: carry)
            return r
        case 3:
            let carry = state.flags.carry
            let r = (dst &- src &- (carry ? 1 : 0)) & mask
            state.flags.record(.sub, size: size, dst: dst, src: src, result: r, carryIn: carry)
            return r
        case 4:
            let r = (dst & src) & mask
            state.flags.record(.logic, size: size, dst: dst, src: src, result: r)
            return r
        case 6:
            let r = (dst ^ src) & mask
            state.flags.record(.logic, size: size, dst: dst, src: src, result: r)
            return r
        default:  // 5 SUB, 7 CMP
            let r = (dst &- src) & mask
            state.flags.record(.sub, size: size, dst: dst, src: src, result: r)
            return r
        }
    }

    /// Opcodes 00-3D: the six encodings of each ALU operation.
    mutating func executeALU(_ insn: inout Instruction) -> Bool {
        let operation = insn.opcode >> 3
        let size = insn.opcode & 1 == 0 ? 1 : insn.operandSize
        switch insn.opcode & 7 {
        case 0, 1:  // Eb,Gb / Ev,Gv
            guard let dst = operation == 7 ? readOperand(insn, size: size) : readOperandForUpdate(insn, size: size) else { return false }
            let r = alu(operation, dst, readRegister(insn, size: size), size: size)
            return operation == 7 || writeOperand(insn, r, size: size)
        case 2, 3:  // Gb,Eb / Gv,Ev
            guard let src = readOperand(insn, size: size) else { return false }
            let r = alu(operation, readRegister(insn, size: size), src, size: size)
            if operation != 7 { writeRegister(insn, r, size: size) }
            return true
        default:  // AL,Ib / rAX,Iz
            let src = signExtend(insn.immediate, size: size == 1 ? 1 : min(size, 4))
            let r = alu(operation, state.read(0, size: size, legacyHighBytes: false), src, size: size)
            if operation != 7 { state.write(0, r, size: size, legacyHighBytes: false) }
            return true
        }
    }

    /// 80 81 82 83: op Eb,Ib / Ev,Iz / Ev,Ib (sign-extended).
    mutating func executeGroup1(_ insn: inout Instruction) -> Bool {
        let size = insn.opcode & 1 == 0 ? 1 : insn.operandSize
        let src = signExtend(insn.immediate, size: insn.opcode == 0x81 ? min(size, 4) : 1)
        let operation = insn.reg & 7
        guard let dst = operation == 7 ? readOperand(insn, size: size) : readOperandForUpdate(insn, size: size) else { return false }
        let r = alu(operation, dst, src, size: size)
        return operation == 7 || writeOperand(insn, r, size: size)
    }

    /// 84 85 A8 A9.
    mutating func executeTest(_ insn: inout Instruction) -> Bool {
        let size = insn.opcode & 1 == 0 ? 1 : insn.operandSize
        let a: UInt64, b: UInt64
        if insn.opcode >= 0xA8 {
            a = state.read(0, size: size, legacyHighBytes: false)
            b = signExtend(insn.immediate, size: min(size, 4))
        } else {
            guard let value = readOperand(insn, size: size) else { return false }
            a = value
            b = readRegister(insn, size: size)
        }
        state.flags.record(.logic, size: size, dst: a, src: b, result: a & b & sizeMask(size))
        return true
    }

    @inline(always)
    mutating func incDec(_ value: UInt64, size: Int, decrement: Bool) -> UInt64 {
        let carry = state.flags.carry
        let r = (decrement ? value &- 1 : value &+ 1) & sizeMask(size)
        state.flags.record(decrement ? .dec : .inc, size: size, dst: value, src: 1, result: r, carryIn: carry)
        return r
    }

    /// 40-4F outside 64-bit mode.
    mutating func executeIncDecRegister(_ insn: inout Instruction) -> Bool {
        let index = insn.opcode & 7
        let value = state.read(index, size: insn.operandSize, legacyHighBytes: false)
        let r = incDec(value, size: insn.operandSize, decrement: insn.opcode >= 0x48)
        state.write(index, r, size: insn.operandSize, legacyHighBytes: false)
        return true
    }

    /// FE /0-1, FF /0-1.
    mutating func executeIncDec(_ insn: inout Instruction, size: Int, decrement: Bool) -> Bool {
        guard let value = readOperandForUpdate(insn, size: size) else { return false }
        return writeOperand(insn, incDec(value, size: size, decrement: decrement), size: size)
    }

    /// F6/F7: TEST NOT NEG MUL IMUL DIV IDIV.
    mutating func executeGroup3(_ insn: inout Instruction) -> Bool {
        let size = insn.opcode == 0xF6 ? 1 : insn.operandSize
        guard let value = insn.reg & 6 == 2 ? readOperandForUpdate(insn, size: size) : readOperand(insn, size: size) else { return false }
        let mask = sizeMask(size)
        switch insn.reg & 7 {
        case 0, 1:
            let imm = signExtend(insn.immediate, size: min(size, 4))
            state.flags.record(.logic, size: size, dst: value, src: imm, result: value & imm & mask)
            return true
        case 2:
            return writeOperand(insn, ~value & mask, size: size)
        case 3:
            let r = (0 &- value) & mask
            state.flags.record(.sub, size: size, dst: 0, src: value, result: r)
            return writeOperand(insn, r, size: size)
        case 4, 5:
            multiply(value, size: size, signed: insn.reg & 7 == 5)
            return true
        default:
            return divide(value, size: size, signed: insn.reg & 7 == 7)
        }
    }

    /// MUL/IMUL with one operand: rDX:rAX (AX for bytes) = rAX * value.
    /// CF = OF = the high half is significant; SF ZF PF follow the low half
    /// and AF is 0 (all four are undefined in the manuals).
    mutating func multiply(_ value: UInt64, size: Int, signed: Bool) {
        let a = state.read(0, size: size, legacyHighBytes: false)
        var low: UInt64, high: UInt64, overflow: Bool
        if signed {
            let product = Int128(Int64(bitPattern: signExtend(a, size: size))) * Int128(Int64(bitPattern: signExtend(value, size: size)))
            let bits = UInt128(bitPattern: product)
            low = UInt64(truncatingIfNeeded: bits) & sizeMask(size)
            high = UInt64(truncatingIfNeeded: bits >> UInt128(size * 8)) & sizeMask(size)
            overflow = Int128(Int64(bitPattern: signExtend(low, size: size))) != product
        } else {
            let product = UInt128(a) * UInt128(value)
            low = UInt64(truncatingIfNeeded: product) & sizeMask(size)
            high = UInt64(truncatingIfNeeded: product >> UInt128(size * 8)) & sizeMask(size)
            overflow = high != 0
        }
        if size == 1 {
            state.write(0, low | (high << 8), size: 2, legacyHighBytes: false)
        } else {
            state.write(0, low, size: size, legacyHighBytes: false)
            state.write(2, high, size: size, legacyHighBytes: false)
        }
        state.flags.record(result: low, size: size, carry: overflow, overflow: overflow)
    }

    /// DIV/IDIV: #DE on a zero divisor or a quotient that does not fit.
    /// The flags are undefined in the manuals and left unchanged here.
    mutating func divide(_ divisor: UInt64, size: Int, signed: Bool) -> Bool {
        guard divisor != 0 else { return fault(.de) }
        let bits = UInt128(size * 8)
        let lowPart: UInt64, highPart: UInt64
        if size == 1 {
            let ax = state.read(0, size: 2, legacyHighBytes: false)
            lowPart = ax & 0xFF
            highPart = ax >> 8
        } else {
            lowPart = state.read(0, size: size, legacyHighBytes: false)
            highPart = state.read(2, size: size, legacyHighBytes: false)
        }
        let dividendBits = (UInt128(highPart) << bits) | UInt128(lowPart)
        var quotient: UInt64, remainder: UInt64
        if signed {
            // Sign-extend the 2*size-byte dividend to 128 bits.
            let shift = 128 - 2 * bits
            let dividend = Int128(bitPattern: dividendBits << shift) >> shift
            let d = Int128(Int64(bitPattern: signExtend(divisor, size: size)))
            if dividend == Int128.min && d == -1 { return fault(.de) }
            let q = dividend / d
            let r = dividend % d
            let limit = Int128(1) << (bits - 1)
            guard q >= -limit && q < limit else { return fault(.de) }
            quotient = UInt64(truncatingIfNeeded: q) & sizeMask(size)
            remainder = UInt64(truncatingIfNeeded: r) & sizeMask(size)
        } else {
            let q = dividendBits / UInt128(divisor)
            guard q >> bits == 0 else { return fault(.de) }
            quotient = UInt64(truncatingIfNeeded: q)
            remainder = UInt64(truncatingIfNeeded: dividendBits % UInt128(divisor))
        }
        if size == 1 {
            state.write(0, quotient | (remainder << 8), size: 2, legacyHighBytes: false)
        } else {
            state.write(0, quotient, size: size, legacyHighBytes: false)
            state.write(2, remainder, size: size, legacyHighBytes: false)
        }
        return true
    }

    /// 69 6B 0F AF: IMUL Gv, Ev(, imm). CF = OF = the product was truncated.
    mutating func executeIMulTwoOperand(_ insn: inout Instruction) -> Bool {
        let size = insn.operandSize
        guard let a = readOperand(insn, size: size) else { return false }
        let b: UInt64
        switch insn.opcode {
        case 0x69: b = signExtend(insn.immediate, size: min(size, 4))
        case 0x6B: b = signExtend(insn.immediate, size: 1)
        default: b = readRegister(insn, size: size)
        }
        let product = Int128(Int64(bitPattern: signExtend(a, size: size))) * Int128(Int64(bitPattern: signExtend(b, size: size)))
        let low = UInt64(truncatingIfNeeded: product) & sizeMask(size)
        let overflow = Int128(Int64(bitPattern: signExtend(low, size: size))) != product
        writeRegister(insn, low, size: size)
        state.flags.record(result: low, size: size, carry: overflow, overflow: overflow)
        return true
    }

    /// Group 2: ROL ROR RCL RCR SHL SHR (SAL) SAR by 1, CL or imm8. The
    /// count is masked to 5 bits (6 for 64-bit operands); a masked count of 0
    /// changes no flag. AF is left 0 and OF is computed for every count
    /// (the manuals define it for count 1 only).
    mutating func executeShift(_ insn: inout Instruction) -> Bool {
        let size = insn.opcode & 1 == 0 ? 1 : insn.operandSize
        let raw: UInt64
        switch insn.opcode {
        case 0xC0, 0xC1: raw = insn.immediate
        case 0xD0, 0xD1: raw = 1
        default: raw = state.reg(1) & 0xFF
        }
        let count = Int(raw & (size == 8 ? 0x3F : 0x1F))
        guard let value = readOperandForUpdate(insn, size: size) else { return false }
        // A zero count changes nothing; a 32-bit register is still written
        // (and so zero-extended), as the instruction names it as destination.
        guard count != 0 else { return insn.isMemory || writeOperand(insn, value, size: size) }
        let bits = size * 8
        let mask = sizeMask(size)
        let sign = signBit(size)
        // Rotates keep SF ZF AF PF: they take the old flags. Shifts set all
        // of them, and record them lazily.
        let old = insn.reg & 7 < 4 ? state.flags.materialized : 0
        var cf = old & RFLAGS.cf != 0
        var result: UInt64
        var flags: UInt64
        switch insn.reg & 7 {
        case 0:  // ROL
            let n = count % bits
            result = n == 0 ? value : ((value << UInt64(n)) | (value >> UInt64(bits - n))) & mask
            cf = result & 1 != 0
            let of = (result & sign != 0) != cf
            flags = (old & ~(RFLAGS.cf | RFLAGS.of)) | (cf ? RFLAGS.cf : 0) | (of ? RFLAGS.of : 0)
        case 1:  // ROR
            let n = count % bits
            result = n == 0 ? value : ((value >> UInt64(n)) | (value << UInt64(bits - n))) & mask
            cf = result & sign != 0
            let of = (result & sign != 0) != (result & (sign >> 1) != 0)
            flags = (old & ~(RFLAGS.cf | RFLAGS.of)) | (cf ? RFLAGS.cf : 0) | (of ? RFLAGS.of : 0)
        case 2, 3:  // RCL, RCR through CF: size+1 bits
            let n = size < 4 ? count % (bits + 1) : count
            result = value
            for _ in 0..<n {
                if insn.reg & 7 == 2 {
                    let out = result & sign != 0
                    result = ((result << 1) | (cf ? 1 : 0)) & mask
                    cf = out
                } else {
                    let out = result & 1 != 0
                    result = (result >> 1) | (cf ? sign : 0)
                    cf = out
                }
            }
            let of = insn.reg & 7 == 2
                ? (result & sign != 0) != cf
                : (result & sign != 0) != (result & (sign >> 1) != 0)
            flags = (old & ~(RFLAGS.cf | RFLAGS.of)) | (cf ? RFLAGS.cf : 0) | (of ? RFLAGS.of : 0)
        case 4, 6:  // SHL/SAL
            result = count < 64 ? (value << UInt64(count)) & mask : 0
            cf = count <= bits ? (value >> UInt64(bits - count)) & 1 != 0 : false
            state.flags.record(result: result, size: size, carry: cf, overflow: (result & sign != 0) != cf)
            return writeOperand(insn, result, size: size)
        case 5:  // SHR
            result = count < bits ? value >> UInt64(count) : 0
            cf = count <= bits ? (value >> UInt64(count - 1)) & 1 != 0 : false
            state.flags.record(result: result, size: size, carry: cf, overflow: value & sign != 0)
            return writeOperand(insn, result, size: size)
        default:  // SAR
            let signed = Int64(bitPattern: signExtend(value, size: size))
            result = UInt64(bitPattern: signed >> Int64(min(count, 63))) & mask
            cf = (signed >> Int64(min(count - 1, 63))) & 1 != 0
            state.flags.record(result: result, size: size, carry: cf, overflow: false)
            return writeOperand(insn, result, size: size)
        }
        state.flags.set(arithmetic: flags)
        return writeOperand(insn, result, size: size)
    }
}
