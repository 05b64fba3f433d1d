// Handlers of cached instructions. The block builder gives each decoded
// instruction a handler (`prepareHandler`): the hot forms get one of their
// own, which does what the family handler behind `execute`'s switch does for
// that form, with the operand size and kinds settled at decode time, through
// the same helpers (`alu`, the lazy flags, register and memory access);
// every other instruction takes `.execute`, the dispatch switch itself, so
// that an opcode added there runs from the cache unchanged. A translator can
// take a block over the same way, with handlers of its own.

/// How a decoded instruction runs.
enum InstructionHandler: UInt8 {
    /// The dispatch switch on the opcode (Execute.swift): every instruction can take it.
    case execute
    /// The same, for the barrier that ends a block (see `invalidateContext`).
    case barrier
    // Family handlers, which `execute`'s switch would pick, called directly.
    case alu, group1, test, move, lea, nop, incDecRegister, pushPop, incDec, controlFlow, shift, group3, setcc, leave
    // Forms of their own. R: a register operand (ModRM.mod = 3), M: memory;
    // all of operand size 2, 4 or 8 (bytes go the family way, for AH-BH).
    /// 01 03 09 0B ... 39 3B with two registers.
    case aluRR
    /// 01 09 ... 39: op m, r.
    case aluMR
    /// 03 0B ... 3B: op r, m.
    case aluRM
    /// 05 0D ... 3D: op rAX, imm.
    case aluAccumulator
    /// 81 83 on a register and in memory.
    case group1R, group1M
    /// 85 with two registers.
    case testRR
    /// 89 and 8B with two registers, 89 to memory, 8B from memory.
    case storeRR, loadRR, store, load
    /// B8-BF.
    case moveImmediate
    /// 50-57, 58-5F.
    case push, pop
    /// 70-7F, 0F 80-8F, EB, E9, E8, C3: the target is in `displacement`.
    case jcc, jump, call, ret
    /// 40-4F (outside 64-bit mode) and FF /0 /1 on a register.
    case incR, decR
    // The commonest of those at operand size 4 and 8, the operation in the
    // name, so that sizes, masks and the operation are constants.
    case add32RR, or32RR, and32RR, sub32RR, xor32RR, cmp32RR
    case add64RR, or64RR, and64RR, sub64RR, xor64RR, cmp64RR
    /// 81 83: the sign-extended immediate is in `displacement`.
    case add32RI, or32RI, and32RI, sub32RI, xor32RI, cmp32RI
    case add64RI, or64RI, and64RI, sub64RI, xor64RI, cmp64RI
    case test32RR, test64RR
    case move32RR, move64RR, load32, load64, store32, store64, moveImmediate32, moveImmediate64
    case inc32R, dec32R, inc64R, dec64R
    /// PUSH, POP, CALL, RET in 64-bit mode without a 66 prefix: 8 bytes, a 64-bit stack.
    case push64, pop64, call64, ret64
    /// The same outside 64-bit mode with a 32-bit operand size (the stack's size is looked at).
    case push32, pop32, call32, ret32
    /// JZ and JNZ, short and near.
    case jz, jnz
    /// Memory forms of the ALU and group 1 (the operation taken from the opcode).
    case aluMR32, aluMR64, aluRM32, aluRM64, group1M32, group1M64
    case lea32, lea64
    /// C7 /0 to memory.
    case storeImmediate32, storeImmediate64
    /// 0F B6, 0F B7 at operand size 4 or 8 (both zero-extend to 64 bits).
    case movzxByte, movzxWord
    // CachedArithmeticHandlers.swift.
    /// 69 6B 0F AF of any size (`execute`), and their 32- and 64-bit forms.
    case imul, imul32, imul64
    case adc32RR, sbb32RR, adc64RR, sbb64RR, adc32RI, sbb32RI, adc64RI, sbb64RI
    /// C1 D1 D3 on a register.
    case shl32R, shr32R, sar32R, rol32R, ror32R, shl64R, shr64R, sar64R, rol64R, ror64R
    /// F7 /4 /5 on a register or in memory.
    case mul32, mul64, imulAccumulator32, imulAccumulator64
    /// F7 /0 /1, /2, /3 on a register or in memory.
    case group3Test32, group3Test64, not32, not64, neg32, neg64
    /// 0F 40-4F, 0F BE, 0F BF, 63 (64-bit mode) at operand size 4 or 8.
    case cmov32, cmov64, movsxByte, movsxWord, movsxd
    /// Byte forms: 84 on registers, 04 0C ... 3C, 80 and F6 /0 /1, 00 02 ... 38 3A,
    /// 88 C6 to memory and 8A from memory.
    case test8RR, aluAccumulator8, group1Byte, aluByte, moveByte
}

/// An operand size settled when the handler is chosen.
protocol OperandWidth {
    static var size: Int { get }
}

enum Width32: OperandWidth {
    static var size: Int { 4 }
}

enum Width64: OperandWidth {
    static var size: Int { 8 }
}

extension X86CPU {
    /// Picks the handler of a decoded instruction, and computes what it
    /// takes from decode time (a branch's target).
    mutating func prepareHandler(_ insn: inout Instruction, barrier: Bool) {
        insn.handler = barrier ? .barrier : X86CPU.specialized(X86CPU.handler(for: insn), insn)
        switch insn.handler {
        case .jcc, .jz, .jnz, .jump, .call, .call64, .call32:
            let op = insn.opcode
            let size = op == 0xEB || op < 0x80 ? 1 : (insn.mode64 ? 4 : min(insn.operandSize, 4))
            insn.displacement = branchTarget(insn.nextRIP &+ signExtend(insn.immediate, size: size), insn)
        case .add32RI, .or32RI, .and32RI, .sub32RI, .xor32RI, .cmp32RI,
             .add64RI, .or64RI, .and64RI, .sub64RI, .xor64RI, .cmp64RI,
             .adc32RI, .sbb32RI, .adc64RI, .sbb64RI:
            insn.displacement = signExtend(insn.immediate, size: insn.opcode == 0x81 ? 4 : 1)
        default:
            break
        }
    }

    /// The handler for an instruction: its own for the hot forms, the family
    /// handler that `execute`'s switch picks (with the same checks) for other
    /// common opcodes, `.execute` for everything else. LOCK goes the general way.
    static func handler(for insn: Instruction) -> InstructionHandler {
        if insn.lock { return .execute }
        let op = insn.opcode
        let register = insn.mod == 3
        switch op {
        case 0x00...0x3F where op & 7 < 4 && op & 1 == 1:
            if register { return .aluRR }
            return op & 2 == 0 ? .aluMR : .aluRM
        case 0x00...0x3F where op & 7 < 4: return .aluByte
        case 0x00...0x3F where op & 7 == 4: return .aluAccumulator8
        case 0x00...0x3F where op & 7 == 5: return .aluAccumulator
        case 0x00...0x3F where op & 7 < 6: return .alu
        case 0x81, 0x83: return register ? .group1R : .group1M
        case 0x85 where register: return .testRR
        case 0x89: return register ? .storeRR : .store
        case 0x8B: return register ? .loadRR : .load
        case 0xB8...0xBF: return .moveImmediate
        case 0x50...0x57: return .push
        case 0x58...0x5F: return .pop
        case 0x70...0x7F, 0x180...0x18F: return .jcc
        case 0xE9, 0xEB: return .jump
        case 0xE8: return .call
        case 0xC3: return .ret
        case 0x40...0x47: return .incR
        case 0x48...0x4F: return .decR
        case 0x68, 0x6A, 0x8F: return .pushPop
        case 0x63 where insn.mode64: return .move
        case 0x88 where !register, 0x8A where !register: return .moveByte
        case 0xC6 where !register && insn.reg & 7 == 0: return .moveByte
        case 0x88, 0x8A, 0x8C, 0xA0...0xA3, 0xB0...0xB7, 0xC6, 0xC7, 0x1B6, 0x1B7, 0x1BE, 0x1BF, 0x140...0x14F:
            return .move
        case 0x8D where insn.isMemory: return .lea
        case 0x84 where register: return .test8RR
        case 0x84, 0x85, 0xA8, 0xA9: return .test
        case 0x90 where insn.rex & 1 == 0: return .nop
        case 0x118...0x11F: return .nop
        case 0x80: return .group1Byte
        case 0xC0, 0xC1, 0xD0...0xD3: return .shift
        case 0xF6 where insn.reg & 7 < 2: return .group1Byte
        case 0xF6, 0xF7: return .group3
        case 0x69, 0x6B, 0x1AF: return .imul
        case 0xFE where insn.reg & 7 < 2: return .incDec
        case 0xFF:
            switch insn.reg & 7 {
            case 0 where register: return .incR
            case 1 where register: return .decR
            case 0, 1: return .incDec
            case 2, 4: return .controlFlow
            case 6: return .pushPop
            default: return .execute
            }
        case 0xE0...0xE3, 0xC2: return .controlFlow
        case 0x190...0x19F: return .setcc
        case 0xC9: return .leave
        default: return .execute
        }
    }

    /// The 32- or 64-bit form of a handler, where there is one.
    static func specialized(_ handler: InstructionHandler, _ insn: Instruction) -> InstructionHandler {
        let wide = insn.operandSize == 8
        guard wide || insn.operandSize == 4 else { return handler }
        switch handler {
        case .aluRR:
            switch insn.opcode >> 3 {
            case 0: return wide ? .add64RR : .add32RR
            case 1: return wide ? .or64RR : .or32RR
            case 2: return wide ? .adc64RR : .adc32RR
            case 3: return wide ? .sbb64RR : .sbb32RR
            case 4: return wide ? .and64RR : .and32RR
            case 5: return wide ? .sub64RR : .sub32RR
            case 6: return wide ? .xor64RR : .xor32RR
            case 7: return wide ? .cmp64RR : .cmp32RR
            default: return handler
            }
        case .group1R:
            switch insn.reg & 7 {
            case 0: return wide ? .add64RI : .add32RI
            case 1: return wide ? .or64RI : .or32RI
            case 2: return wide ? .adc64RI : .adc32RI
            case 3: return wide ? .sbb64RI : .sbb32RI
            case 4: return wide ? .and64RI : .and32RI
            case 5: return wide ? .sub64RI : .sub32RI
            case 6: return wide ? .xor64RI : .xor32RI
            case 7: return wide ? .cmp64RI : .cmp32RI
            default: return handler
            }
        case .aluMR: return wide ? .aluMR64 : .aluMR32
        case .aluRM: return wide ? .aluRM64 : .aluRM32
        case .group1M: return wide ? .group1M64 : .group1M32
        case .testRR: return wide ? .test64RR : .test32RR
        case .storeRR, .loadRR: return wide ? .move64RR : .move32RR
        case .load: return wide ? .load64 : .load32
        case .store: return wide ? .store64 : .store32
        case .moveImmediate: return wide ? .moveImmediate64 : .moveImmediate32
        case .incR: return wide ? .inc64R : .inc32R
        case .decR: return wide ? .dec64R : .dec32R
        case .lea: return wide ? .lea64 : .lea32
        case .move:
            switch insn.opcode {
            case 0xC7 where insn.isMemory && insn.reg & 7 == 0: return wide ? .storeImmediate64 : .storeImmediate32
            case 0x1B6: return .movzxByte
            case 0x1B7: return .movzxWord
            case 0x1BE: return .movsxByte
            case 0x1BF: return .movsxWord
            case 0x63: return .movsxd
            case 0x140...0x14F: return wide ? .cmov64 : .cmov32
            default: return handler
            }
        case .imul: return wide ? .imul64 : .imul32
        case .shift:
            // C1 D1 D3 (not the byte forms) on a register; RCL RCR stay with the family.
            guard insn.mod == 3 && insn.opcode & 1 == 1 else { return handler }
            switch insn.reg & 7 {
            case 0: return wide ? .rol64R : .rol32R
            case 1: return wide ? .ror64R : .ror32R
            case 4, 6: return wide ? .shl64R : .shl32R
            case 5: return wide ? .shr64R : .shr32R
            case 7: return wide ? .sar64R : .sar32R
            default: return handler
            }
        case .group3:
            guard insn.opcode == 0xF7 else { return handler }
            switch insn.reg & 7 {
            case 0, 1: return wide ? .group3Test64 : .group3Test32
            case 2: return wide ? .not64 : .not32
            case 3: return wide ? .neg64 : .neg32
            case 4: return wide ? .mul64 : .mul32
            case 5: return wide ? .imulAccumulator64 : .imulAccumulator32
            default: return handler
            }
        case .push, .pop, .call, .ret:
            // 64-bit mode without a 66 prefix (the operand size is then 4 or 8).
            if insn.mode64 {
                guard !insn.operandSizePrefix else { return handler }
                switch handler {
                case .push: return .push64
                case .pop: return .pop64
                case .call: return .call64
                default: return .ret64
                }
            }
            guard insn.operandSize == 4 else { return handler }
            switch handler {
            case .push: return .push32
            case .pop: return .pop32
            case .call: return .call32
            default: return .ret32
            }
        case .jcc:
            switch insn.opcode & 0xF {
            case 4: return .jz
            case 5: return .jnz
            default: return handler
            }
        default:
            return handler
        }
    }

    /// Runs a decoded instruction through its handler: a jump table on a
    /// small enum, where `execute`'s switch compares opcode ranges in turn.
    /// Returns false with the fault or exit in `pending`, as `execute` does.
    /// Each handler is a small function of its own: the block loop keeps its
    /// few values in registers across the calls (one function holding every
    /// handler spilled them).
    @inline(always)
    mutating func dispatch(_ insn: inout Instruction, rip: UInt64) -> HandlerResult {
        switch insn.handler {
        case .aluRR: return runALURR(&insn)
        case .aluMR: return runALUMR(&insn)
        case .aluRM: return runALURM(&insn)
        case .aluAccumulator: return runALUAccumulator(&insn)
        case .group1R: return runGroup1R(&insn)
        case .group1M: return runGroup1M(&insn)
        case .testRR: return runTestRR(&insn)
        case .storeRR: return runStoreRR(&insn)
        case .loadRR: return runLoadRR(&insn)
        case .store: return runStore(&insn)
        case .load: return runLoad(&insn)
        case .moveImmediate: return runMoveImmediate(&insn)
        case .push: return runPush(&insn)
        case .pop: return runPop(&insn)
        case .jcc: return runJcc(&insn)
        case .jump: return runJump(&insn)
        case .call: return runCall(&insn)
        case .ret: return runRet(&insn)
        case .incR, .decR: return runIncDecR(&insn)
        case .add32RR: return runAdd32RR(&insn)
        case .or32RR: return runOr32RR(&insn)
        case .and32RR: return runAnd32RR(&insn)
        case .sub32RR: return runSub32RR(&insn)
        case .xor32RR: return runXor32RR(&insn)
        case .cmp32RR: return runCmp32RR(&insn)
        case .add32RI: return runAdd32RI(&insn)
        case .or32RI: return runOr32RI(&insn)
        case .and32RI: return runAnd32RI(&insn)
        case .sub32RI: return runSub32RI(&insn)
        case .xor32RI: return runXor32RI(&insn)
        case .cmp32RI: return runCmp32RI(&insn)
        case .test32RR: return runTest32RR(&insn)
        case .move32RR: return runMove32RR(&insn)
        case .load32: return runLoad32(&insn)
        case .store32: return runStore32(&insn)
        case .moveImmediate32: return runMoveImmediate32(&insn)
        case .inc32R: return runInc32R(&insn)
        case .dec32R: return runDec32R(&insn)
        case .add64RR: return runAdd64RR(&insn)
        case .or64RR: return runOr64RR(&insn)
        case .and64RR: return runAnd64RR(&insn)
        case .sub64RR: return runSub64RR(&insn)
        case .xor64RR: return runXor64RR(&insn)
        case .cmp64RR: return runCmp64RR(&insn)
        case .add64RI: return runAdd64RI(&insn)
        case .or64RI: return runOr64RI(&insn)
        case .and64RI: return runAnd64RI(&insn)
        case .sub64RI: return runSub64RI(&insn)
        case .xor64RI: return runXor64RI(&insn)
        case .cmp64RI: return runCmp64RI(&insn)
        case .test64RR: return runTest64RR(&insn)
        case .move64RR: return runMove64RR(&insn)
        case .load64: return runLoad64(&insn)
        case .store64: return runStore64(&insn)
        case .moveImmediate64: return runMoveImmediate64(&insn)
        case .inc64R: return runInc64R(&insn)
        case .dec64R: return runDec64R(&insn)
        case .push32: return runPush32(&insn)
        case .pop32: return runPop32(&insn)
        case .call32: return runCall32(&insn)
        case .ret32: return runRet32(&insn)
        case .push64: return runPush64(&insn)
        case .pop64: return runPop64(&insn)
        case .call64: return runCall64(&insn)
        case .ret64: return runRet64(&insn)
        case .aluMR32: return runALUMR32(&insn)
        case .aluMR64: return runALUMR64(&insn)
        case .aluRM32: return runALURM32(&insn)
        case .aluRM64: return runALURM64(&insn)
        case .group1M32: return runGroup1M32(&insn)
        case .group1M64: return runGroup1M64(&insn)
        case .lea32: return runLEA32(&insn)
        case .lea64: return runLEA64(&insn)
        case .storeImmediate32: return runStoreImmediate32(&insn)
        case .storeImmediate64: return runStoreImmediate64(&insn)
        case .movzxByte: return runMOVZXByte(&insn)
        case .movzxWord: return runMOVZXWord(&insn)
        case .jz: return runJz(&insn)
        case .jnz: return runJnz(&insn)
        case .nop: return .next
        case .setcc: return runSetcc(&insn)
        case .imul32: return runIMul32(&insn)
        case .imul64: return runIMul64(&insn)
        case .adc32RR: return runADC32RR(&insn)
        case .sbb32RR: return runSBB32RR(&insn)
        case .adc64RR: return runADC64RR(&insn)
        case .sbb64RR: return runSBB64RR(&insn)
        case .adc32RI: return runADC32RI(&insn)
        case .sbb32RI: return runSBB32RI(&insn)
        case .adc64RI: return runADC64RI(&insn)
        case .sbb64RI: return runSBB64RI(&insn)
        case .shl32R: return runSHL32R(&insn)
        case .shr32R: return runSHR32R(&insn)
        case .sar32R: return runSAR32R(&insn)
        case .rol32R: return runROL32R(&insn)
        case .ror32R: return runROR32R(&insn)
        case .shl64R: return runSHL64R(&insn)
        case .shr64R: return runSHR64R(&insn)
        case .sar64R: return runSAR64R(&insn)
        case .rol64R: return runROL64R(&insn)
        case .ror64R: return runROR64R(&insn)
        case .mul32: return runMul32(&insn)
        case .mul64: return runMul64(&insn)
        case .imulAccumulator32: return runIMulAccumulator32(&insn)
        case .imulAccumulator64: return runIMulAccumulator64(&insn)
        case .group3Test32: return runGroup3Test32(&insn)
        case .group3Test64: return runGroup3Test64(&insn)
        case .not32: return runNot32(&insn)
        case .not64: return runNot64(&insn)
        case .neg32: return runNeg32(&insn)
        case .neg64: return runNeg64(&insn)
        case .cmov32: return runCMov32(&insn)
        case .cmov64: return runCMov64(&insn)
        case .movsxByte: return runMOVSXByte(&insn)
        case .movsxWord: return runMOVSXWord(&insn)
        case .movsxd: return runMOVSXD(&insn)
        case .test8RR: return runTest8RR(&insn)
        case .aluAccumulator8: return runALUAccumulator8(&insn)
        case .group1Byte: return runGroup1Byte(&insn)
        case .aluByte: return runALUByte(&insn)
        case .moveByte: return runMoveByte(&insn)
        case .execute, .barrier, .alu, .group1, .test, .move, .lea, .incDecRegister, .pushPop, .incDec,
             .controlFlow, .shift, .group3, .leave, .imul:
            return dispatchFamily(&insn, rip: rip)
        }
    }

    // MARK: The 32- and 64-bit forms

    @inline(always) mutating func runAdd32RR(_ insn: inout Instruction) -> HandlerResult { aluRR(0, Width32.self, &insn) }
    @inline(always) mutating func runOr32RR(_ insn: inout Instruction) -> HandlerResult { aluRR(1, Width32.self, &insn) }
    @inline(always) mutating func runAnd32RR(_ insn: inout Instruction) -> HandlerResult { aluRR(4, Width32.self, &insn) }
    @inline(always) mutating func runSub32RR(_ insn: inout Instruction) -> HandlerResult { aluRR(5, Width32.self, &insn) }
    @inline(always) mutating func runXor32RR(_ insn: inout Instruction) -> HandlerResult { aluRR(6, Width32.self, &insn) }
    @inline(always) mutating func runCmp32RR(_ insn: inout Instruction) -> HandlerResult { aluRR(7, Width32.self, &insn) }
    @inline(always) mutating func runAdd32RI(_ insn: inout Instruction) -> HandlerResult { aluRI(0, Width32.self, &insn) }
    @inline(always) mutating func runOr32RI(_ insn: inout Instruction) -> HandlerResult { aluRI(1, Width32.self, &insn) }
    @inline(always) mutating func runAnd32RI(_ insn: inout Instruction) -> HandlerResult { aluRI(4, Width32.self, &insn) }
    @inline(always) mutating func runSub32RI(_ insn: inout Instruction) -> HandlerResult { aluRI(5, Width32.self, &insn) }
    @inline(always) mutating func runXor32RI(_ insn: inout Instruction) -> HandlerResult { aluRI(6, Width32.self, &insn) }
    @inline(always) mutating func runCmp32RI(_ insn: inout Instruction) -> HandlerResult { aluRI(7, Width32.self, &insn) }
    @inline(always) mutating func runTest32RR(_ insn: inout Instruction) -> HandlerResult { testRR(Width32.self, &insn) }
    @inline(always) mutating func runMove32RR(_ insn: inout Instruction) -> HandlerResult { moveRR(Width32.self, &insn) }
    @inline(always) mutating func runLoad32(_ insn: inout Instruction) -> HandlerResult { load(Width32.self, &insn) }
    @inline(always) mutating func runStore32(_ insn: inout Instruction) -> HandlerResult { store(Width32.self, &insn) }
    @inline(always) mutating func runMoveImmediate32(_ insn: inout Instruction) -> HandlerResult { moveImmediate(Width32.self, &insn) }
    @inline(always) mutating func runInc32R(_ insn: inout Instruction) -> HandlerResult { incDecR(Width32.self, false, &insn) }
    @inline(always) mutating func runDec32R(_ insn: inout Instruction) -> HandlerResult { incDecR(Width32.self, true, &insn) }
    @inline(always) mutating func runAdd64RR(_ insn: inout Instruction) -> HandlerResult { aluRR(0, Width64.self, &insn) }
    @inline(always) mutating func runOr64RR(_ insn: inout Instruction) -> HandlerResult { aluRR(1, Width64.self, &insn) }
    @inline(always) mutating func runAnd64RR(_ insn: inout Instruction) -> HandlerResult { aluRR(4, Width64.self, &insn) }
    @inline(always) mutating func runSub64RR(_ insn: inout Instruction) -> HandlerResult { aluRR(5, Width64.self, &insn) }
    @inline(always) mutating func runXor64RR(_ insn: inout Instruction) -> HandlerResult { aluRR(6, Width64.self, &insn) }
    @inline(always) mutating func runCmp64RR(_ insn: inout Instruction) -> HandlerResult { aluRR(7, Width64.self, &insn) }
    @inline(always) mutating func runAdd64RI(_ insn: inout Instruction) -> HandlerResult { aluRI(0, Width64.self, &insn) }
    @inline(always) mutating func runOr64RI(_ insn: inout Instruction) -> HandlerResult { aluRI(1, Width64.self, &insn) }
    @inline(always) mutating func runAnd64RI(_ insn: inout Instruction) -> HandlerResult { aluRI(4, Width64.self, &insn) }
    @inline(always) mutating func runSub64RI(_ insn: inout Instruction) -> HandlerResult { aluRI(5, Width64.self, &insn) }
    @inline(always) mutating func runXor64RI(_ insn: inout Instruction) -> HandlerResult { aluRI(6, Width64.self, &insn) }
    @inline(always) mutating func runCmp64RI(_ insn: inout Instruction) -> HandlerResult { aluRI(7, Width64.self, &insn) }
    @inline(always) mutating func runTest64RR(_ insn: inout Instruction) -> HandlerResult { testRR(Width64.self, &insn) }
    @inline(always) mutating func runMove64RR(_ insn: inout Instruction) -> HandlerResult { moveRR(Width64.self, &insn) }
    @inline(always) mutating func runLoad64(_ insn: inout Instruction) -> HandlerResult { load(Width64.self, &insn) }
    @inline(always) mutating func runStore64(_ insn: inout Instruction) -> HandlerResult { store(Width64.self, &insn) }
    @inline(always) mutating func runMoveImmediate64(_ insn: inout Instruction) -> HandlerResult { moveImmediate(Width64.self, &insn) }
    @inline(always) mutating func runInc64R(_ insn: inout Instruction) -> HandlerResult { incDecR(Width64.self, false, &insn) }
    @inline(always) mutating func runDec64R(_ insn: inout Instruction) -> HandlerResult { incDecR(Width64.self, true, &insn) }

    @inline(always)
    mutating func aluRR<W: OperandWidth>(_ operation: Int, _: W.Type, _ insn: inout Instruction) -> HandlerResult {
        let (destination, source) = insn.opcode & 2 == 0 ? (insn.rm, insn.reg) : (insn.reg, insn.rm)
        let r = alu(operation, readGPR(destination, W.size), readGPR(source, W.size), size: W.size)
        if operation != 7 { writeGPR(destination, r, W.size) }
        return .next
    }

    @inline(always)
    mutating func aluRI<W: OperandWidth>(_ operation: Int, _: W.Type, _ insn: inout Instruction) -> HandlerResult {
        let r = alu(operation, readGPR(insn.rm, W.size), insn.displacement, size: W.size)
        if operation != 7 { writeGPR(insn.rm, r, W.size) }
        return .next
    }

    // Out of the block loop: inlining them all there made it too big for
    // the optimizer to inline the small accessors it calls.
    @inline(never) mutating func runALUMR32(_ insn: inout Instruction) -> HandlerResult { aluMR(Width32.self, &insn) }
    @inline(never) mutating func runALUMR64(_ insn: inout Instruction) -> HandlerResult { aluMR(Width64.self, &insn) }
    @inline(never) mutating func runALURM32(_ insn: inout Instruction) -> HandlerResult { aluRM(Width32.self, &insn) }
    @inline(never) mutating func runALURM64(_ insn: inout Instruction) -> HandlerResult { aluRM(Width64.self, &insn) }
    @inline(never) mutating func runGroup1M32(_ insn: inout Instruction) -> HandlerResult { group1M(Width32.self, &insn) }
    @inline(never) mutating func runGroup1M64(_ insn: inout Instruction) -> HandlerResult { group1M(Width64.self, &insn) }
    @inline(never) mutating func runLEA32(_ insn: inout Instruction) -> HandlerResult { lea(Width32.self, &insn) }
    @inline(never) mutating func runLEA64(_ insn: inout Instruction) -> HandlerResult { lea(Width64.self, &insn) }
    @inline(never) mutating func runStoreImmediate32(_ insn: inout Instruction) -> HandlerResult {
        storeImmediate(Width32.self, &insn)
    }
    @inline(never) mutating func runStoreImmediate64(_ insn: inout Instruction) -> HandlerResult {
        storeImmediate(Width64.self, &insn)
    }
    @inline(never) mutating func runMOVZXByte(_ insn: inout Instruction) -> HandlerResult { movzx(1, &insn) }
    @inline(never) mutating func runMOVZXWord(_ insn: inout Instruction) -> HandlerResult { movzx(2, &insn) }

    @inline(always)
    mutating func aluMR<W: OperandWidth>(_: W.Type, _ insn: inout Instruction) -> HandlerResult {
        let operation = insn.opcode >> 3
        let offset = effectiveAddress(&insn)
        guard let value = operation == 7 ? cachedRead(insn.segment, offset, size: W.size)
                                            : cachedReadForUpdate(insn.segment, offset, size: W.size) else { return .fault }
        let r = alu(operation, value, readGPR(insn.reg, W.size), size: W.size)
        guard operation == 7 || cachedWrite(insn.segment, offset, r, size: W.size) else { return .fault }
        return .next
    }

    @inline(always)
    mutating func aluRM<W: OperandWidth>(_: W.Type, _ insn: inout Instruction) -> HandlerResult {
        let operation = insn.opcode >> 3
        guard let value = cachedRead(insn.segment, effectiveAddress(&insn), size: W.size) else { return .fault }
        let r = alu(operation, readGPR(insn.reg, W.size), value, size: W.size)
        if operation != 7 { writeGPR(insn.reg, r, W.size) }
        return .next
    }

    @inline(always)
    mutating func group1M<W: OperandWidth>(_: W.Type, _ insn: inout Instruction) -> HandlerResult {
        let operation = insn.reg & 7
        let source = signExtend(insn.immediate, size: insn.opcode == 0x81 ? 4 : 1)
        let offset = effectiveAddress(&insn)
        guard let value = operation == 7 ? cachedRead(insn.segment, offset, size: W.size)
                                            : cachedReadForUpdate(insn.segment, offset, size: W.size) else { return .fault }
        let r = alu(operation, value, source, size: W.size)
        guard operation == 7 || cachedWrite(insn.segment, offset, r, size: W.size) else { return .fault }
        return .next
    }

    @inline(always)
    mutating func lea<W: OperandWidth>(_: W.Type, _ insn: inout Instruction) -> HandlerResult {
        writeGPR(insn.reg, effectiveAddress(&insn), W.size)
        return .next
    }

    @inline(always)
    mutating func storeImmediate<W: OperandWidth>(_: W.Type, _ insn: inout Instruction) -> HandlerResult {
        guard cachedWrite(insn.segment, effectiveAddress(&insn), signExtend(insn.immediate, size: 4), size: W.size) else {
            return .fault
        }
        return .next
    }

    /// MOVZX from a byte (AH-BH without REX) or word register or memory.
    @inline(always)
    mutating func movzx(_ sourceSize: Int, _ insn: inout Instruction) -> HandlerResult {
        guard let value = cachedNarrowSource(sourceSize, &insn) else { return .fault }
        writeGPR(insn.reg, value, insn.operandSize)
        return .next
    }

    /// The r/m source operand at the form's operand size: the register, or
    /// memory through the cached access (nil: its fault is pending).
    @inline(always)
    mutating func cachedSource<W: OperandWidth>(_: W.Type, _ insn: inout Instruction) -> UInt64? {
        insn.mod == 3 ? readGPR(insn.rm, W.size) : cachedRead(insn.segment, effectiveAddress(&insn), size: W.size)
    }

    /// The r/m source operand of a widening move (MOVZX, MOVSX, MOVSXD),
    /// `size` bytes: a byte register is AH-BH without REX.
    @inline(always)
    mutating func cachedNarrowSource(_ size: Int, _ insn: inout Instruction) -> UInt64? {
        insn.mod == 3 ? state.read(insn.rm, size: size, legacyHighBytes: insn.legacyHighBytes)
                      : cachedRead(insn.segment, effectiveAddress(&insn), size: size)
    }

    @inline(always)
    mutating func testRR<W: OperandWidth>(_: W.Type, _ insn: inout Instruction) -> HandlerResult {
        let a = readGPR(insn.rm, W.size), b = readGPR(insn.reg, W.size)
        state.flags.record(.logic, size: W.size, dst: a, src: b, result: a & b)
        return .next
    }

    @inline(always)
    mutating func moveRR<W: OperandWidth>(_: W.Type, _ insn: inout Instruction) -> HandlerResult {
        let (destination, source) = insn.opcode == 0x89 ? (insn.rm, insn.reg) : (insn.reg, insn.rm)
        writeGPR(destination, readGPR(source, W.size), W.size)
        return .next
    }

    @inline(always)
    mutating func load<W: OperandWidth>(_: W.Type, _ insn: inout Instruction) -> HandlerResult {
        guard let value = cachedRead(insn.segment, effectiveAddress(&insn), size: W.size) else { return .fault }
        writeGPR(insn.reg, value, W.size)
        return .next
    }

    @inline(always)
    mutating func store<W: OperandWidth>(_: W.Type, _ insn: inout Instruction) -> HandlerResult {
        guard cachedWrite(insn.segment, effectiveAddress(&insn), readGPR(insn.reg, W.size), size: W.size) else { return .fault }
        return .next
    }

    @inline(always)
    mutating func moveImmediate<W: OperandWidth>(_: W.Type, _ insn: inout Instruction) -> HandlerResult {
        writeGPR((insn.opcode & 7) | (insn.rex & 1 != 0 ? 8 : 0), insn.immediate, W.size)
        return .next
    }

    @inline(always)
    mutating func incDecR<W: OperandWidth>(_: W.Type, _ decrement: Bool, _ insn: inout Instruction) -> HandlerResult {
        // 40-4F name the register in the opcode, FF in ModRM.rm.
        let index = insn.opcode == 0xFF ? insn.rm : insn.opcode & 7
        writeGPR(index, incDec(readGPR(index, W.size), size: W.size, decrement: decrement), W.size)
        return .next
    }

    /// A push in 64-bit mode: 8 bytes below RSP (SS has no base there).
    @inline(always)
    mutating func push64(_ value: UInt64) -> Bool {
        let rsp = state.reg(4) &- 8
        guard cachedWrite(SegmentRegisterName.ss.rawValue, rsp, value, size: 8) else { return false }
        state.setReg(4, rsp)
        return true
    }

    @inline(always)
    mutating func pop64() -> UInt64? {
        let rsp = state.reg(4)
        guard let value = cachedRead(SegmentRegisterName.ss.rawValue, rsp, size: 8) else { return nil }
        state.setReg(4, rsp &+ 8)
        return value
    }

    /// A 4-byte push outside 64-bit mode, on a 32-bit stack or, rarely, a 16-bit one.
    @inline(always)
    mutating func push32(_ value: UInt64) -> Bool {
        if codePage.stackSize == 4 {
            let rsp = (state.reg(4) &- 4) & 0xFFFF_FFFF
            guard cachedWrite(SegmentRegisterName.ss.rawValue, rsp, value, size: 4) else { return false }
            state.setReg(4, rsp)
            return true
        }
        return stackPush(value, size: 4)
    }

    @inline(always)
    mutating func pop32() -> UInt64? {
        if codePage.stackSize == 4 {
            let rsp = state.reg(4) & 0xFFFF_FFFF
            guard let value = cachedRead(SegmentRegisterName.ss.rawValue, rsp, size: 4) else { return nil }
            state.setReg(4, (rsp &+ 4) & 0xFFFF_FFFF)
            return value
        }
        return stackPop(size: 4)
    }

    @inline(always)
    mutating func runPush32(_ insn: inout Instruction) -> HandlerResult {
        guard push32(state.reg((insn.opcode & 7) | (insn.rex & 1 != 0 ? 8 : 0)) & 0xFFFF_FFFF) else { return .fault }
        return .next
    }

    @inline(always)
    mutating func runPop32(_ insn: inout Instruction) -> HandlerResult {
        guard let value = pop32() else { return .fault }
        state.setReg((insn.opcode & 7) | (insn.rex & 1 != 0 ? 8 : 0), value)
        return .next
    }

    @inline(always)
    mutating func runCall32(_ insn: inout Instruction) -> HandlerResult {
        guard push32(insn.nextRIP) else { return .fault }
        state.rip = insn.displacement
        return .branched
    }

    @inline(always)
    mutating func runRet32(_ insn: inout Instruction) -> HandlerResult {
        guard let target = pop32() else { return .fault }
        state.rip = target
        return .branched
    }

    @inline(always)
    mutating func runPush64(_ insn: inout Instruction) -> HandlerResult {
        guard push64(state.reg((insn.opcode & 7) | (insn.rex & 1 != 0 ? 8 : 0))) else { return .fault }
        return .next
    }

    @inline(always)
    mutating func runPop64(_ insn: inout Instruction) -> HandlerResult {
        guard let value = pop64() else { return .fault }
        state.setReg((insn.opcode & 7) | (insn.rex & 1 != 0 ? 8 : 0), value)
        return .next
    }

    @inline(always)
    mutating func runCall64(_ insn: inout Instruction) -> HandlerResult {
        guard push64(insn.nextRIP) else { return .fault }
        state.rip = insn.displacement
        return .branched
    }

    @inline(always)
    mutating func runRet64(_ insn: inout Instruction) -> HandlerResult {
        guard let target = pop64() else { return .fault }
        state.rip = target
        return .branched
    }

    @inline(always)
    mutating func runJz(_ insn: inout Instruction) -> HandlerResult {
        guard state.flags.zero else { return .next }
        state.rip = insn.displacement
        return .branched
    }

    @inline(always)
    mutating func runJnz(_ insn: inout Instruction) -> HandlerResult {
        guard !state.flags.zero else { return .next }
        state.rip = insn.displacement
        return .branched
    }

    @inline(never)
    mutating func runALURR(_ insn: inout Instruction) -> HandlerResult {
        let size = insn.operandSize
        let operation = insn.opcode >> 3
        let (destination, source) = insn.opcode & 2 == 0 ? (insn.rm, insn.reg) : (insn.reg, insn.rm)
        let r = alu(operation, readGPR(destination, size), readGPR(source, size), size: size)
        if operation != 7 { writeGPR(destination, r, size) }
        return .next
    }

    @inline(never)
    mutating func runALUMR(_ insn: inout Instruction) -> HandlerResult {
        let size = insn.operandSize
        let operation = insn.opcode >> 3
        let offset = effectiveAddress(&insn)
        guard let value = operation == 7 ? cachedRead(insn.segment, offset, size: size)
                                            : cachedReadForUpdate(insn.segment, offset, size: size) else { return .fault }
        let r = alu(operation, value, readGPR(insn.reg, size), size: size)
        guard operation == 7 || cachedWrite(insn.segment, offset, r, size: size) else { return .fault }
        return .next
    }

    @inline(never)
    mutating func runALURM(_ insn: inout Instruction) -> HandlerResult {
        let size = insn.operandSize
        let operation = insn.opcode >> 3
        guard let value = cachedRead(insn.segment, effectiveAddress(&insn), size: size) else { return .fault }
        let r = alu(operation, readGPR(insn.reg, size), value, size: size)
        if operation != 7 { writeGPR(insn.reg, r, size) }
        return .next
    }

    @inline(never)
    mutating func runALUAccumulator(_ insn: inout Instruction) -> HandlerResult {
        let size = insn.operandSize
        let operation = insn.opcode >> 3
        let r = alu(operation, readGPR(0, size), signExtend(insn.immediate, size: min(size, 4)), size: size)
        if operation != 7 { writeGPR(0, r, size) }
        return .next
    }

    @inline(never)
    mutating func runGroup1R(_ insn: inout Instruction) -> HandlerResult {
        let size = insn.operandSize
        let operation = insn.reg & 7
        let source = signExtend(insn.immediate, size: insn.opcode == 0x81 ? min(size, 4) : 1)
        let r = alu(operation, readGPR(insn.rm, size), source, size: size)
        if operation != 7 { writeGPR(insn.rm, r, size) }
        return .next
    }

    @inline(never)
    mutating func runGroup1M(_ insn: inout Instruction) -> HandlerResult {
        let size = insn.operandSize
        let operation = insn.reg & 7
        let source = signExtend(insn.immediate, size: insn.opcode == 0x81 ? min(size, 4) : 1)
        let offset = effectiveAddress(&insn)
        guard let value = operation == 7 ? cachedRead(insn.segment, offset, size: size)
                                            : cachedReadForUpdate(insn.segment, offset, size: size) else { return .fault }
        let r = alu(operation, value, source, size: size)
        guard operation == 7 || cachedWrite(insn.segment, offset, r, size: size) else { return .fault }
        return .next
    }

    @inline(never)
    mutating func runTestRR(_ insn: inout Instruction) -> HandlerResult {
        let size = insn.operandSize
        let a = readGPR(insn.rm, size), b = readGPR(insn.reg, size)
        state.flags.record(.logic, size: size, dst: a, src: b, result: a & b)
        return .next
    }

    @inline(never)
    mutating func runStoreRR(_ insn: inout Instruction) -> HandlerResult {
        let size = insn.operandSize
        writeGPR(insn.rm, readGPR(insn.reg, size), size)
        return .next
    }

    @inline(never)
    mutating func runLoadRR(_ insn: inout Instruction) -> HandlerResult {
        let size = insn.operandSize
        writeGPR(insn.reg, readGPR(insn.rm, size), size)
        return .next
    }

    @inline(never)
    mutating func runStore(_ insn: inout Instruction) -> HandlerResult {
        let size = insn.operandSize
        guard cachedWrite(insn.segment, effectiveAddress(&insn), readGPR(insn.reg, size), size: size) else { return .fault }
        return .next
    }

    @inline(never)
    mutating func runLoad(_ insn: inout Instruction) -> HandlerResult {
        let size = insn.operandSize
        guard let value = cachedRead(insn.segment, effectiveAddress(&insn), size: size) else { return .fault }
        writeGPR(insn.reg, value, size)
        return .next
    }

    @inline(never)
    mutating func runMoveImmediate(_ insn: inout Instruction) -> HandlerResult {
        writeGPR((insn.opcode & 7) | (insn.rex & 1 != 0 ? 8 : 0), insn.immediate, insn.operandSize)
        return .next
    }

    @inline(never)
    mutating func runPush(_ insn: inout Instruction) -> HandlerResult {
        let stackSize = stackOperandSize(insn)
        guard stackPush(readGPR((insn.opcode & 7) | (insn.rex & 1 != 0 ? 8 : 0), stackSize), size: stackSize) else {
            return .fault
        }
        return .next
    }

    @inline(never)
    mutating func runPop(_ insn: inout Instruction) -> HandlerResult {
        let stackSize = stackOperandSize(insn)
        guard let value = stackPop(size: stackSize) else { return .fault }
        writeGPR((insn.opcode & 7) | (insn.rex & 1 != 0 ? 8 : 0), value, stackSize)
        return .next
    }

    @inline(never)
    mutating func runJcc(_ insn: inout Instruction) -> HandlerResult {
        guard state.flags.condition(insn.opcode & 0xF) else { return .next }
        state.rip = insn.displacement
        return .branched
    }

    @inline(never)
    mutating func runJump(_ insn: inout Instruction) -> HandlerResult {
        state.rip = insn.displacement
        return .branched
    }

    @inline(never)
    mutating func runCall(_ insn: inout Instruction) -> HandlerResult {
        guard stackPush(insn.nextRIP, size: stackOperandSize(insn)) else { return .fault }
        state.rip = insn.displacement
        return .branched
    }

    @inline(never)
    mutating func runRet(_ insn: inout Instruction) -> HandlerResult {
        guard let target = stackPop(size: stackOperandSize(insn)) else { return .fault }
        state.rip = target
        return .branched
    }

    @inline(never)
    mutating func runIncDecR(_ insn: inout Instruction) -> HandlerResult {
        let size = insn.operandSize
        // 40-4F name the register in the opcode, FF in ModRM.rm.
        let index = insn.opcode == 0xFF ? insn.rm : insn.opcode & 7
        writeGPR(index, incDec(readGPR(index, size), size: size, decrement: insn.handler == .decR), size)
        return .next
    }

    /// The family handlers and `execute`, for the instructions without a handler of their own.
    @inline(never)
    mutating func dispatchFamily(_ insn: inout Instruction, rip: UInt64) -> HandlerResult {
        state.rip = rip
        return runFamily(&insn) ? .branched : .stop
    }

    @inline(always)
    mutating func runFamily(_ insn: inout Instruction) -> Bool {
        if insn.hasModRM && insn.mod != 3 { insn.offset = effectiveAddress(&insn) }
        switch insn.handler {
        case .barrier:
            if X86CPU.isSerializing(insn) { invalidateContext() }
            return execute(&insn)
        case .alu: guard executeALU(&insn) else { return false }
        case .group1: guard executeGroup1(&insn) else { return false }
        case .test: guard executeTest(&insn) else { return false }
        case .move: guard executeMove(&insn) else { return false }
        case .lea: state.write(insn.reg, insn.offset, size: insn.operandSize, legacyHighBytes: false)
        case .nop: break
        case .incDecRegister: guard executeIncDecRegister(&insn) else { return false }
        case .pushPop: guard executePushPop(&insn) else { return false }
        case .incDec:
            let size = insn.opcode == 0xFE ? 1 : insn.operandSize
            guard executeIncDec(&insn, size: size, decrement: insn.reg & 7 == 1) else { return false }
        case .controlFlow: return executeControlFlow(&insn)
        case .shift: guard executeShift(&insn) else { return false }
        case .group3: guard executeGroup3(&insn) else { return false }
        case .setcc:
            guard writeOperand(insn, state.flags.condition(insn.opcode & 0xF) ? 1 : 0, size: 1) else { return false }
        case .leave: guard executeLeave(&insn) else { return false }
        default: return execute(&insn)
        }
        state.rip = insn.nextRIP
        return true
    }

    // MARK: Helpers of the handlers

    /// A general register at operand size 2, 4 or 8.
    @inline(always)
    mutating func readGPR(_ index: Int, _ size: Int) -> UInt64 {
        state.reg(index) & sizeMask(size)
    }

    /// Writes a general register at operand size 2, 4 or 8: 16 bits merge,
    /// 32 bits zero the upper half.
    @inline(always)
    mutating func writeGPR(_ index: Int, _ value: UInt64, _ size: Int) {
        if size == 2 {
            state.setReg(index, (state.reg(index) & ~0xFFFF) | (value & 0xFFFF))
        } else {
            state.setReg(index, value & sizeMask(size))
        }
    }

    /// `push`, with the stack's address size of the fetch state (only a barrier changes SS or the mode).
    @inline(always)
    mutating func stackPush(_ value: UInt64, size: Int) -> Bool {
        let addressSize = codePage.stackSize
        let rsp = (state.reg(4) &- UInt64(truncatingIfNeeded: size)) & sizeMask(addressSize)
        guard cachedWrite(SegmentRegisterName.ss.rawValue, rsp, value, size: size) else { return false }
        state.write(4, rsp, size: addressSize, legacyHighBytes: false)
        return true
    }

    /// `pop`, in the same way.
    @inline(always)
    mutating func stackPop(size: Int) -> UInt64? {
        let addressSize = codePage.stackSize
        let rsp = state.reg(4)
        guard let value = cachedRead(SegmentRegisterName.ss.rawValue, rsp & sizeMask(addressSize), size: size) else { return nil }
        state.write(4, (rsp &+ UInt64(truncatingIfNeeded: size)) & sizeMask(addressSize), size: addressSize, legacyHighBytes: false)
        return value
    }
}
