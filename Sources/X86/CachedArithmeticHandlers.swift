// Cached handlers of the arithmetic the Linux boot runs most after the ALU
// (an opcode histogram of what fell to the family handlers): shifts and
// rotates, multiplies, ADC/SBB, SETcc, CMOVcc, MOVSX/MOVSXD, TEST with an
// immediate, NEG/NOT and the commonest byte forms. Each does what the
// family handler does for its form (Arithmetic.swift, DataTransfer.swift),
// with the operand size settled at decode time; flags that the SDM leaves
// undefined come out as the family handlers make them.

extension X86CPU {
    // MARK: ADC and SBB (the ALU's helpers, out of the block loop)

    @inline(never) mutating func runADC32RR(_ insn: inout Instruction) -> HandlerResult { aluRR(2, Width32.self, &insn) }
    @inline(never) mutating func runSBB32RR(_ insn: inout Instruction) -> HandlerResult { aluRR(3, Width32.self, &insn) }
    @inline(never) mutating func runADC64RR(_ insn: inout Instruction) -> HandlerResult { aluRR(2, Width64.self, &insn) }
    @inline(never) mutating func runSBB64RR(_ insn: inout Instruction) -> HandlerResult { aluRR(3, Width64.self, &insn) }
    @inline(never) mutating func runADC32RI(_ insn: inout Instruction) -> HandlerResult { aluRI(2, Width32.self, &insn) }
    @inline(never) mutating func runSBB32RI(_ insn: inout Instruction) -> HandlerResult { aluRI(3, Width32.self, &insn) }
    @inline(never) mutating func runADC64RI(_ insn: inout Instruction) -> HandlerResult { aluRI(2, Width64.self, &insn) }
    @inline(never) mutating func runSBB64RI(_ insn: inout Instruction) -> HandlerResult { aluRI(3, Width64.self, &insn) }

    // MARK: Shifts and rotates (C1, D1, D3 on a register)

    /// The count of C1 (imm8), D1 (1) or D3 (CL), masked as the operand size says.
    @inline(always)
    mutating func shiftCount<W: OperandWidth>(_: W.Type, _ insn: inout Instruction) -> UInt64 {
        let raw: UInt64
        switch insn.opcode {
        case 0xC1: raw = insn.immediate
        case 0xD1: raw = 1
        default: raw = state.reg(1)
        }
        return raw & (W.size == 8 ? 0x3F : 0x1F)
    }

    @inline(never) mutating func runSHL32R(_ insn: inout Instruction) -> HandlerResult { shiftR(4, Width32.self, &insn) }
    @inline(never) mutating func runSHR32R(_ insn: inout Instruction) -> HandlerResult { shiftR(5, Width32.self, &insn) }
    @inline(never) mutating func runSAR32R(_ insn: inout Instruction) -> HandlerResult { shiftR(7, Width32.self, &insn) }
    @inline(never) mutating func runROL32R(_ insn: inout Instruction) -> HandlerResult { shiftR(0, Width32.self, &insn) }
    @inline(never) mutating func runROR32R(_ insn: inout Instruction) -> HandlerResult { shiftR(1, Width32.self, &insn) }
    @inline(never) mutating func runSHL64R(_ insn: inout Instruction) -> HandlerResult { shiftR(4, Width64.self, &insn) }
    @inline(never) mutating func runSHR64R(_ insn: inout Instruction) -> HandlerResult { shiftR(5, Width64.self, &insn) }
    @inline(never) mutating func runSAR64R(_ insn: inout Instruction) -> HandlerResult { shiftR(7, Width64.self, &insn) }
    @inline(never) mutating func runROL64R(_ insn: inout Instruction) -> HandlerResult { shiftR(0, Width64.self, &insn) }
    @inline(never) mutating func runROR64R(_ insn: inout Instruction) -> HandlerResult { shiftR(1, Width64.self, &insn) }

    /// ROL ROR SHL SHR SAR of a 32- or 64-bit register, as `executeShift`:
    /// the masked count is below the width, so no case of its wider counts
    /// arises; a count of 0 changes no flag but still writes (zero-extends) a
    /// 32-bit register.
    @inline(always)
    mutating func shiftR<W: OperandWidth>(_ operation: Int, _: W.Type, _ insn: inout Instruction) -> HandlerResult {
        let count = shiftCount(W.self, &insn)
        let value = readGPR(insn.rm, W.size)
        guard count != 0 else {
            writeGPR(insn.rm, value, W.size)
            return .next
        }
        let bits = UInt64(W.size * 8)
        let mask = sizeMask(W.size)
        let sign = signBit(W.size)
        let result: UInt64
        switch operation {
        case 0:  // ROL
            result = ((value &<< count) | (value &>> (bits &- count))) & mask
            let cf = result & 1 != 0
            let of = (result & sign != 0) != cf
            state.flags.set(arithmetic: (state.flags.materialized & ~(RFLAGS.cf | RFLAGS.of))
                                | (cf ? RFLAGS.cf : 0) | (of ? RFLAGS.of : 0))
        case 1:  // ROR
            result = ((value &>> count) | (value &<< (bits &- count))) & mask
            let cf = result & sign != 0
            let of = cf != (result & (sign >> 1) != 0)
            state.flags.set(arithmetic: (state.flags.materialized & ~(RFLAGS.cf | RFLAGS.of))
                                | (cf ? RFLAGS.cf : 0) | (of ? RFLAGS.of : 0))
        case 4:  // SHL
            result = (value &<< count) & mask
            let cf = (value &>> (bits &- count)) & 1 != 0
            state.flags.record(result: result, size: W.size, carry: cf, overflow: (result & sign != 0) != cf)
        case 5:  // SHR
            result = value &>> count
            state.flags.record(result: result, size: W.size, carry: (value &>> (count &- 1)) & 1 != 0,
                               overflow: value & sign != 0)
        default:  // SAR
            let signed = Int64(bitPattern: signExtend(value, size: W.size))
            result = UInt64(bitPattern: signed &>> Int64(count)) & mask
            state.flags.record(result: result, size: W.size, carry: (signed &>> Int64(count &- 1)) & 1 != 0, overflow: false)
        }
        writeGPR(insn.rm, result, W.size)
        return .next
    }

    // MARK: Multiplies

    /// The signed product of two values of the width, its low half and
    /// whether it was truncated (IMUL's CF = OF).
    @inline(always)
    func signedProduct<W: OperandWidth>(_: W.Type, _ a: UInt64, _ b: UInt64) -> (low: UInt64, high: UInt64, overflow: Bool) {
        if W.size == 8 {
            let (high, low) = Int64(bitPattern: a).multipliedFullWidth(by: Int64(bitPattern: b))
            return (low, UInt64(bitPattern: high), high != Int64(bitPattern: low) >> 63)
        }
        let product = Int64(Int32(truncatingIfNeeded: a)) &* Int64(Int32(truncatingIfNeeded: b))
        let low = UInt64(truncatingIfNeeded: product) & 0xFFFF_FFFF
        return (low, UInt64(bitPattern: product >> 32) & 0xFFFF_FFFF, Int64(Int32(truncatingIfNeeded: product)) != product)
    }

    @inline(never) mutating func runIMul32(_ insn: inout Instruction) -> HandlerResult { imul(Width32.self, &insn) }
    @inline(never) mutating func runIMul64(_ insn: inout Instruction) -> HandlerResult { imul(Width64.self, &insn) }

    /// 0F AF, 69, 6B: IMUL Gv, Ev(, imm), as `executeIMulTwoOperand`.
    @inline(always)
    mutating func imul<W: OperandWidth>(_: W.Type, _ insn: inout Instruction) -> HandlerResult {
        guard let a = cachedSource(W.self, &insn) else { return .fault }
        let b: UInt64
        switch insn.opcode {
        case 0x69: b = signExtend(insn.immediate, size: 4)
        case 0x6B: b = signExtend(insn.immediate, size: 1)
        default: b = readGPR(insn.reg, W.size)
        }
        let (low, _, overflow) = signedProduct(W.self, a, b)
        writeGPR(insn.reg, low, W.size)
        state.flags.record(result: low, size: W.size, carry: overflow, overflow: overflow)
        return .next
    }

    @inline(never) mutating func runMul32(_ insn: inout Instruction) -> HandlerResult { multiplyAccumulator(false, Width32.self, &insn) }
    @inline(never) mutating func runMul64(_ insn: inout Instruction) -> HandlerResult { multiplyAccumulator(false, Width64.self, &insn) }
    @inline(never) mutating func runIMulAccumulator32(_ insn: inout Instruction) -> HandlerResult {
        multiplyAccumulator(true, Width32.self, &insn)
    }
    @inline(never) mutating func runIMulAccumulator64(_ insn: inout Instruction) -> HandlerResult {
        multiplyAccumulator(true, Width64.self, &insn)
    }

    /// F7 /4 /5: rDX:rAX = rAX * Ev, as `multiply`.
    @inline(always)
    mutating func multiplyAccumulator<W: OperandWidth>(_ signed: Bool, _: W.Type, _ insn: inout Instruction) -> HandlerResult {
        guard let value = cachedSource(W.self, &insn) else { return .fault }
        let a = readGPR(0, W.size)
        let low: UInt64, high: UInt64, overflow: Bool
        if signed {
            (low, high, overflow) = signedProduct(W.self, a, value)
        } else if W.size == 8 {
            (high, low) = a.multipliedFullWidth(by: value)
            overflow = high != 0
        } else {
            let product = a &* value
            low = product & 0xFFFF_FFFF
            high = product >> 32
            overflow = high != 0
        }
        writeGPR(0, low, W.size)
        writeGPR(2, high, W.size)
        state.flags.record(result: low, size: W.size, carry: overflow, overflow: overflow)
        return .next
    }

    // MARK: F7 /0 /2 /3: TEST with an immediate, NOT, NEG

    @inline(never) mutating func runGroup3Test32(_ insn: inout Instruction) -> HandlerResult { group3(0, Width32.self, &insn) }
    @inline(never) mutating func runGroup3Test64(_ insn: inout Instruction) -> HandlerResult { group3(0, Width64.self, &insn) }
    @inline(never) mutating func runNot32(_ insn: inout Instruction) -> HandlerResult { group3(2, Width32.self, &insn) }
    @inline(never) mutating func runNot64(_ insn: inout Instruction) -> HandlerResult { group3(2, Width64.self, &insn) }
    @inline(never) mutating func runNeg32(_ insn: inout Instruction) -> HandlerResult { group3(3, Width32.self, &insn) }
    @inline(never) mutating func runNeg64(_ insn: inout Instruction) -> HandlerResult { group3(3, Width64.self, &insn) }

    /// As `executeGroup3` for TEST (/0 /1), NOT and NEG, on a register or memory.
    @inline(always)
    mutating func group3<W: OperandWidth>(_ operation: Int, _: W.Type, _ insn: inout Instruction) -> HandlerResult {
        let mask = sizeMask(W.size)
        if operation == 0 {
            guard let value = cachedSource(W.self, &insn) else { return .fault }
            let imm = signExtend(insn.immediate, size: 4)
            state.flags.record(.logic, size: W.size, dst: value, src: imm, result: value & imm & mask)
            return .next
        }
        if insn.mod == 3 {
            let value = readGPR(insn.rm, W.size)
            writeGPR(insn.rm, group3Result(operation, value, W.size), W.size)
            return .next
        }
        let offset = effectiveAddress(&insn)
        guard let value = cachedReadForUpdate(insn.segment, offset, size: W.size),
              cachedWrite(insn.segment, offset, group3Result(operation, value, W.size), size: W.size) else { return .fault }
        return .next
    }

    @inline(always)
    mutating func group3Result(_ operation: Int, _ value: UInt64, _ size: Int) -> UInt64 {
        let mask = sizeMask(size)
        if operation == 2 { return ~value & mask }
        let r = (0 &- value) & mask
        state.flags.record(.sub, size: size, dst: 0, src: value, result: r)
        return r
    }

    // MARK: SETcc, CMOVcc, MOVSX, MOVSXD

    /// 0F 90-9F to a byte register (AH-BH without REX) or memory.
    @inline(never)
    mutating func runSetcc(_ insn: inout Instruction) -> HandlerResult {
        let value: UInt64 = state.flags.condition(insn.opcode & 0xF) ? 1 : 0
        if insn.mod == 3 {
            state.write(insn.rm, value, size: 1, legacyHighBytes: insn.legacyHighBytes)
            return .next
        }
        guard cachedWrite(insn.segment, effectiveAddress(&insn), value, size: 1) else { return .fault }
        return .next
    }

    @inline(never) mutating func runCMov32(_ insn: inout Instruction) -> HandlerResult { cmov(Width32.self, &insn) }
    @inline(never) mutating func runCMov64(_ insn: inout Instruction) -> HandlerResult { cmov(Width64.self, &insn) }

    /// 0F 40-4F: the source is read (and can fault) either way, and a 32-bit
    /// destination is written (zero-extended) either way.
    @inline(always)
    mutating func cmov<W: OperandWidth>(_: W.Type, _ insn: inout Instruction) -> HandlerResult {
        guard let value = cachedSource(W.self, &insn) else { return .fault }
        if state.flags.condition(insn.opcode & 0xF) {
            writeGPR(insn.reg, value, W.size)
        } else if W.size == 4 {
            writeGPR(insn.reg, readGPR(insn.reg, 4), 4)
        }
        return .next
    }

    /// 63 in 64-bit mode at operand size 4 or 8: MOVSXD (a plain 32-bit move at size 4).
    @inline(never)
    mutating func runMOVSXD(_ insn: inout Instruction) -> HandlerResult {
        guard let value = cachedNarrowSource(4, &insn) else { return .fault }
        writeGPR(insn.reg, insn.operandSize == 8 ? signExtend(value, size: 4) : value, insn.operandSize)
        return .next
    }

    @inline(never) mutating func runMOVSXByte(_ insn: inout Instruction) -> HandlerResult { movsx(1, &insn) }
    @inline(never) mutating func runMOVSXWord(_ insn: inout Instruction) -> HandlerResult { movsx(2, &insn) }

    /// 0F BE, 0F BF at operand size 4 or 8.
    @inline(always)
    mutating func movsx(_ sourceSize: Int, _ insn: inout Instruction) -> HandlerResult {
        guard let value = cachedNarrowSource(sourceSize, &insn) else { return .fault }
        writeGPR(insn.reg, signExtend(value, size: sourceSize), insn.operandSize)
        return .next
    }

    // MARK: Byte forms

    /// 84 with two byte registers.
    @inline(never)
    mutating func runTest8RR(_ insn: inout Instruction) -> HandlerResult {
        let a = state.read(insn.rm, size: 1, legacyHighBytes: insn.legacyHighBytes)
        let b = state.read(insn.reg, size: 1, legacyHighBytes: insn.legacyHighBytes)
        state.flags.record(.logic, size: 1, dst: a, src: b, result: a & b)
        return .next
    }

    /// 04 0C ... 3C: op AL, imm8.
    @inline(never)
    mutating func runALUAccumulator8(_ insn: inout Instruction) -> HandlerResult {
        let operation = insn.opcode >> 3
        let r = alu(operation, state.reg(0) & 0xFF, signExtend(insn.immediate, size: 1), size: 1)
        if operation != 7 { state.setReg(0, (state.reg(0) & ~0xFF) | r) }
        return .next
    }

    /// 80 /0-7 and F6 /0 /1 (TEST) on a byte register or in memory.
    @inline(never)
    mutating func runGroup1Byte(_ insn: inout Instruction) -> HandlerResult {
        let test = insn.opcode == 0xF6
        let operation = test ? 4 : insn.reg & 7
        let readOnly = test || operation == 7
        let imm = signExtend(insn.immediate, size: 1)
        if insn.mod == 3 {
            let value = state.read(insn.rm, size: 1, legacyHighBytes: insn.legacyHighBytes)
            if test {
                state.flags.record(.logic, size: 1, dst: value, src: imm, result: value & imm & 0xFF)
                return .next
            }
            let r = alu(operation, value, imm, size: 1)
            if !readOnly { state.write(insn.rm, r, size: 1, legacyHighBytes: insn.legacyHighBytes) }
            return .next
        }
        let offset = effectiveAddress(&insn)
        guard let value = readOnly ? cachedRead(insn.segment, offset, size: 1)
                                   : cachedReadForUpdate(insn.segment, offset, size: 1) else { return .fault }
        if test {
            state.flags.record(.logic, size: 1, dst: value, src: imm, result: value & imm & 0xFF)
            return .next
        }
        let r = alu(operation, value, imm, size: 1)
        guard readOnly || cachedWrite(insn.segment, offset, r, size: 1) else { return .fault }
        return .next
    }

    /// 00 02 08 0A ... 38 3A: op Eb, Gb and op Gb, Eb, registers or memory.
    @inline(never)
    mutating func runALUByte(_ insn: inout Instruction) -> HandlerResult {
        let operation = insn.opcode >> 3
        let high = insn.legacyHighBytes
        let toRegister = insn.opcode & 2 != 0
        if insn.mod == 3 {
            let (destination, source) = toRegister ? (insn.reg, insn.rm) : (insn.rm, insn.reg)
            let r = alu(operation, state.read(destination, size: 1, legacyHighBytes: high),
                        state.read(source, size: 1, legacyHighBytes: high), size: 1)
            if operation != 7 { state.write(destination, r, size: 1, legacyHighBytes: high) }
            return .next
        }
        let offset = effectiveAddress(&insn)
        if toRegister {
            guard let value = cachedRead(insn.segment, offset, size: 1) else { return .fault }
            let r = alu(operation, state.read(insn.reg, size: 1, legacyHighBytes: high), value, size: 1)
            if operation != 7 { state.write(insn.reg, r, size: 1, legacyHighBytes: high) }
            return .next
        }
        guard let value = operation == 7 ? cachedRead(insn.segment, offset, size: 1)
                                          : cachedReadForUpdate(insn.segment, offset, size: 1) else { return .fault }
        let r = alu(operation, value, state.read(insn.reg, size: 1, legacyHighBytes: high), size: 1)
        guard operation == 7 || cachedWrite(insn.segment, offset, r, size: 1) else { return .fault }
        return .next
    }

    /// 88 and C6 /0 to memory, 8A from memory: byte moves.
    @inline(never)
    mutating func runMoveByte(_ insn: inout Instruction) -> HandlerResult {
        let offset = effectiveAddress(&insn)
        switch insn.opcode {
        case 0x88:
            let value = state.read(insn.reg, size: 1, legacyHighBytes: insn.legacyHighBytes)
            guard cachedWrite(insn.segment, offset, value, size: 1) else { return .fault }
        case 0xC6:
            guard cachedWrite(insn.segment, offset, insn.immediate & 0xFF, size: 1) else { return .fault }
        default:
            guard let value = cachedRead(insn.segment, offset, size: 1) else { return .fault }
            state.write(insn.reg, value, size: 1, legacyHighBytes: insn.legacyHighBytes)
        }
        return .next
    }
}
