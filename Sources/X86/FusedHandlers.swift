// Fused pairs: a flag-setting instruction (CMP, TEST, ADD, SUB, AND, OR,
// XOR, INC, DEC on registers, CMP with a memory operand) and the Jcc that
// follows it in a block run as one handler, one dispatch for two
// instructions. The block builder fuses them after the block is decoded
// (`fusePairs`): the first instruction takes the fused handler, the Jcc's
// condition (`fusedCondition`), its next RIP (`nextRIP`) and its target (in
// `traceNext`: a Jcc's trace always goes on at its next RIP, so the loop
// compares a taken branch with `nextRIP`); the Jcc stays in the pool
// behind it, unreached.
//
// What the pair does is what the two instructions do: the first records
// the lazy flags exactly as its own handler does (later instructions see
// them), then the branch is taken or not. The block loop counts two
// instructions for a fused result (`.fusedNext`, `.fusedBranched`); a fault
// of the first is an ordinary `.fault` with RIP at it, counting none. A pair
// never straddles the instruction limit (the loop shortens the block before
// it, or runs the first alone the uncached way). Debugging, TF, RF and an
// interrupt shadow run uncached, never reaching a pair.

extension InstructionHandler {
    /// Whether the handler runs a fused pair (two instructions).
    var isFused: Bool { rawValue >= InstructionHandler.cmpJcc32RR.rawValue }
}

extension X86CPU {
    /// The fused form of a flag-setting handler followed by a Jcc, if there is one.
    static func fused(_ handler: InstructionHandler, _ insn: Instruction) -> InstructionHandler? {
        switch handler {
        case .cmp32RR: return .cmpJcc32RR
        case .cmp64RR: return .cmpJcc64RR
        case .cmp32RI: return .cmpJcc32RI
        case .cmp64RI: return .cmpJcc64RI
        case .test32RR: return .testJcc32RR
        case .test64RR: return .testJcc64RR
        case .add32RR, .or32RR, .and32RR, .sub32RR, .xor32RR: return .aluJcc32RR
        case .add64RR, .or64RR, .and64RR, .sub64RR, .xor64RR: return .aluJcc64RR
        case .add32RI, .or32RI, .and32RI, .sub32RI, .xor32RI: return .aluJcc32RI
        case .add64RI, .or64RI, .and64RI, .sub64RI, .xor64RI: return .aluJcc64RI
        case .inc32R, .dec32R: return .incDecJcc32R
        case .inc64R, .dec64R: return .incDecJcc64R
        case .aluRM32 where insn.opcode >> 3 == 7: return .cmpJcc32RM
        case .aluRM64 where insn.opcode >> 3 == 7: return .cmpJcc64RM
        case .aluMR32 where insn.opcode >> 3 == 7: return .cmpJcc32MR
        case .aluMR64 where insn.opcode >> 3 == 7: return .cmpJcc64MR
        case .group1M32 where insn.reg & 7 == 7: return .cmpJcc32MI
        case .group1M64 where insn.reg & 7 == 7: return .cmpJcc64MI
        default: return nil
        }
    }

    /// Fuses each flag-setting instruction of a freshly built block with the
    /// Jcc after it (the next instruction of the trace, in the same block).
    static func fusePairs(_ pool: UnsafeMutablePointer<Instruction>, count: Int) {
        var k = 0
        while k + 1 < count {
            let jcc = pool[k + 1]
            switch jcc.handler {
            case .jcc, .jz, .jnz:
                if let handler = fused(pool[k].handler, pool[k]) {
                    pool[k].handler = handler
                    pool[k].fusedCondition = jcc.opcode & 0xF
                    pool[k].nextRIP = jcc.nextRIP
                    pool[k].traceNext = jcc.displacement
                    k += 2
                    continue
                }
            default:
                break
            }
            k += 1
        }
    }

    @inline(always)
    mutating func fusedBranch(_ taken: Bool, _ insn: inout Instruction) -> HandlerResult {
        guard taken else { return .fusedNext }
        state.rip = insn.traceNext
        return .fusedBranched
    }

    /// The condition `cc` after `a - b` (CMP, SUB) at operand size `size`,
    /// computed from the operands rather than from the recorded flags.
    @inline(always)
    static func subCondition(_ cc: Int, _ a: UInt64, _ b: UInt64, _ r: UInt64, size: Int) -> Bool {
        let shift = UInt64(truncatingIfNeeded: 64 &- size &* 8)
        let value: Bool
        switch cc >> 1 {
        case 0: value = Int64(bitPattern: ((a ^ b) & (a ^ r)) &<< shift) < 0
        case 1: value = a < b
        case 2: value = a == b
        case 3: value = a <= b
        case 4: value = Int64(bitPattern: r &<< shift) < 0
        case 5: value = parityEven(r)
        case 6: value = Int64(bitPattern: a &<< shift) < Int64(bitPattern: b &<< shift)
        default: value = Int64(bitPattern: a &<< shift) <= Int64(bitPattern: b &<< shift)
        }
        return cc & 1 == 0 ? value : !value
    }

    /// The condition `cc` after a logical result `r` (TEST, AND): CF = OF = 0.
    @inline(always)
    static func logicCondition(_ cc: Int, _ r: UInt64, size: Int) -> Bool {
        let shift = UInt64(truncatingIfNeeded: 64 &- size &* 8)
        let negative = Int64(bitPattern: r &<< shift) < 0
        let value: Bool
        switch cc >> 1 {
        case 0, 1: value = false
        case 2, 3: value = r == 0
        case 4, 6: value = negative
        case 5: value = parityEven(r)
        default: value = r == 0 || negative
        }
        return cc & 1 == 0 ? value : !value
    }

    /// The condition `cc` from CF, OF and a result (ADD, INC, DEC).
    @inline(always)
    static func arithmeticCondition(_ cc: Int, carry: Bool, overflow: Bool, _ r: UInt64, size: Int) -> Bool {
        let shift = UInt64(truncatingIfNeeded: 64 &- size &* 8)
        let negative = Int64(bitPattern: r &<< shift) < 0
        let value: Bool
        switch cc >> 1 {
        case 0: value = overflow
        case 1: value = carry
        case 2: value = r == 0
        case 3: value = carry || r == 0
        case 4: value = negative
        case 5: value = parityEven(r)
        case 6: value = negative != overflow
        default: value = r == 0 || negative != overflow
        }
        return cc & 1 == 0 ? value : !value
    }

    /// The condition after `alu(operation, a, b)` gave `r` (not ADC/SBB, not CMP's 7 which is SUB's).
    @inline(always)
    static func aluCondition(_ cc: Int, _ operation: Int, _ a: UInt64, _ b: UInt64, _ r: UInt64, size: Int) -> Bool {
        switch operation {
        case 0:
            let shift = UInt64(truncatingIfNeeded: 64 &- size &* 8)
            let overflow = Int64(bitPattern: ((a ^ r) & (b ^ r)) &<< shift) < 0
            return arithmeticCondition(cc, carry: r < a, overflow: overflow, r, size: size)
        case 5, 7: return subCondition(cc, a, b, r, size: size)
        default: return logicCondition(cc, r, size: size)
        }
    }

    @inline(always) mutating func runCmpJcc32RR(_ insn: inout Instruction) -> HandlerResult { cmpJccRR(Width32.self, &insn) }
    @inline(always) mutating func runCmpJcc64RR(_ insn: inout Instruction) -> HandlerResult { cmpJccRR(Width64.self, &insn) }
    @inline(always) mutating func runCmpJcc32RI(_ insn: inout Instruction) -> HandlerResult { cmpJccRI(Width32.self, &insn) }
    @inline(always) mutating func runCmpJcc64RI(_ insn: inout Instruction) -> HandlerResult { cmpJccRI(Width64.self, &insn) }
    @inline(always) mutating func runTestJcc32RR(_ insn: inout Instruction) -> HandlerResult { testJccRR(Width32.self, &insn) }
    @inline(always) mutating func runTestJcc64RR(_ insn: inout Instruction) -> HandlerResult { testJccRR(Width64.self, &insn) }
    @inline(always) mutating func runALUJcc32RR(_ insn: inout Instruction) -> HandlerResult { aluJccRR(Width32.self, &insn) }
    @inline(always) mutating func runALUJcc64RR(_ insn: inout Instruction) -> HandlerResult { aluJccRR(Width64.self, &insn) }
    @inline(always) mutating func runALUJcc32RI(_ insn: inout Instruction) -> HandlerResult { aluJccRI(Width32.self, &insn) }
    @inline(always) mutating func runALUJcc64RI(_ insn: inout Instruction) -> HandlerResult { aluJccRI(Width64.self, &insn) }
    @inline(always) mutating func runIncDecJcc32R(_ insn: inout Instruction) -> HandlerResult { incDecJccR(Width32.self, &insn) }
    @inline(always) mutating func runIncDecJcc64R(_ insn: inout Instruction) -> HandlerResult { incDecJccR(Width64.self, &insn) }
    @inline(never) mutating func runCmpJcc32RM(_ insn: inout Instruction) -> HandlerResult { cmpJccRM(Width32.self, &insn) }
    @inline(never) mutating func runCmpJcc64RM(_ insn: inout Instruction) -> HandlerResult { cmpJccRM(Width64.self, &insn) }
    @inline(never) mutating func runCmpJcc32MR(_ insn: inout Instruction) -> HandlerResult { cmpJccMR(Width32.self, &insn) }
    @inline(never) mutating func runCmpJcc64MR(_ insn: inout Instruction) -> HandlerResult { cmpJccMR(Width64.self, &insn) }
    @inline(never) mutating func runCmpJcc32MI(_ insn: inout Instruction) -> HandlerResult { cmpJccMI(Width32.self, &insn) }
    @inline(never) mutating func runCmpJcc64MI(_ insn: inout Instruction) -> HandlerResult { cmpJccMI(Width64.self, &insn) }

    /// CMP a, b and the Jcc: the flags as `alu(7, ...)` records them.
    @inline(always)
    mutating func compareAndBranch(_ a: UInt64, _ source: UInt64, size: Int, _ insn: inout Instruction) -> HandlerResult {
        let b = source & sizeMask(size)
        let r = (a &- b) & sizeMask(size)
        // `source` as `alu` records it (an immediate sign-extended to 64 bits).
        state.flags.record(.sub, size: size, dst: a, src: source, result: r)
        return fusedBranch(X86CPU.subCondition(insn.fusedCondition, a, b, r, size: size), &insn)
    }

    @inline(always)
    mutating func cmpJccRR<W: OperandWidth>(_: W.Type, _ insn: inout Instruction) -> HandlerResult {
        let (destination, source) = insn.opcode & 2 == 0 ? (insn.rm, insn.reg) : (insn.reg, insn.rm)
        return compareAndBranch(readGPR(destination, W.size), readGPR(source, W.size), size: W.size, &insn)
    }

    @inline(always)
    mutating func cmpJccRI<W: OperandWidth>(_: W.Type, _ insn: inout Instruction) -> HandlerResult {
        compareAndBranch(readGPR(insn.rm, W.size), insn.displacement, size: W.size, &insn)
    }

    @inline(always)
    mutating func testJccRR<W: OperandWidth>(_: W.Type, _ insn: inout Instruction) -> HandlerResult {
        let a = readGPR(insn.rm, W.size), b = readGPR(insn.reg, W.size)
        let r = a & b
        state.flags.record(.logic, size: W.size, dst: a, src: b, result: r)
        return fusedBranch(X86CPU.logicCondition(insn.fusedCondition, r, size: W.size), &insn)
    }

    @inline(always)
    mutating func aluJccRR<W: OperandWidth>(_: W.Type, _ insn: inout Instruction) -> HandlerResult {
        let operation = insn.opcode >> 3
        let (destination, source) = insn.opcode & 2 == 0 ? (insn.rm, insn.reg) : (insn.reg, insn.rm)
        let a = readGPR(destination, W.size), b = readGPR(source, W.size)
        let r = alu(operation, a, b, size: W.size)
        writeGPR(destination, r, W.size)
        return fusedBranch(X86CPU.aluCondition(insn.fusedCondition, operation, a, b, r, size: W.size), &insn)
    }

    @inline(always)
    mutating func aluJccRI<W: OperandWidth>(_: W.Type, _ insn: inout Instruction) -> HandlerResult {
        let operation = insn.reg & 7
        let a = readGPR(insn.rm, W.size), b = insn.displacement & sizeMask(W.size)
        let r = alu(operation, a, insn.displacement, size: W.size)
        writeGPR(insn.rm, r, W.size)
        return fusedBranch(X86CPU.aluCondition(insn.fusedCondition, operation, a, b, r, size: W.size), &insn)
    }

    @inline(always)
    mutating func incDecJccR<W: OperandWidth>(_: W.Type, _ insn: inout Instruction) -> HandlerResult {
        // 40-4F name the register in the opcode, FF in ModRM.rm (/1 is DEC).
        let index = insn.opcode == 0xFF ? insn.rm : insn.opcode & 7
        let decrement = insn.opcode == 0xFF ? insn.reg & 7 == 1 : insn.opcode >= 0x48
        let a = readGPR(index, W.size)
        let r = incDec(a, size: W.size, decrement: decrement)
        writeGPR(index, r, W.size)
        // CF is kept (recorded as carryIn); OF is set when the sign flips one way.
        let overflow = decrement ? a == signBit(W.size) : r == signBit(W.size)
        return fusedBranch(X86CPU.arithmeticCondition(insn.fusedCondition, carry: state.flags.carryIn, overflow: overflow,
                                                      r, size: W.size), &insn)
    }

    @inline(always)
    mutating func cmpJccRM<W: OperandWidth>(_: W.Type, _ insn: inout Instruction) -> HandlerResult {
        guard let value = cachedRead(insn.segment, effectiveAddress(&insn), size: W.size) else { return .fault }
        return compareAndBranch(readGPR(insn.reg, W.size), value, size: W.size, &insn)
    }

    @inline(always)
    mutating func cmpJccMR<W: OperandWidth>(_: W.Type, _ insn: inout Instruction) -> HandlerResult {
        guard let value = cachedRead(insn.segment, effectiveAddress(&insn), size: W.size) else { return .fault }
        return compareAndBranch(value, readGPR(insn.reg, W.size), size: W.size, &insn)
    }

    @inline(always)
    mutating func cmpJccMI<W: OperandWidth>(_: W.Type, _ insn: inout Instruction) -> HandlerResult {
        let source = signExtend(insn.immediate, size: insn.opcode == 0x81 ? 4 : 1)
        guard let value = cachedRead(insn.segment, effectiveAddress(&insn), size: W.size) else { return .fault }
        return compareAndBranch(value, source, size: W.size, &insn)
    }
}
