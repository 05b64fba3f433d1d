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
}

extension X86CPU {
    /// Picks the handler of a decoded instruction, and computes what it
    /// takes from decode time (a branch's target).
    mutating func prepareHandler(_ insn: inout Instruction, barrier: Bool) {
        insn.handler = barrier ? .barrier : handler(for: insn)
        switch insn.handler {
        case .jcc, .jump, .call:
            let op = insn.opcode
            let size = op == 0xEB || op < 0x80 ? 1 : (insn.mode64 ? 4 : min(insn.operandSize, 4))
            insn.displacement = branchTarget(insn.nextRIP &+ signExtend(insn.immediate, size: size), insn)
        default:
            break
        }
    }

    /// The handler for an instruction: its own for the hot forms, the family
    /// handler that `execute`'s switch picks (with the same checks) for other
    /// common opcodes, `.execute` for everything else. LOCK goes the general way.
    func handler(for insn: Instruction) -> InstructionHandler {
        if insn.lock { return .execute }
        let op = insn.opcode
        let register = insn.mod == 3
        switch op {
        case 0x00...0x3F where op & 7 < 4 && op & 1 == 1:
            if register { return .aluRR }
            return op & 2 == 0 ? .aluMR : .aluRM
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
        case 0x63, 0x88, 0x8A, 0x8C, 0xA0...0xA3, 0xB0...0xB7, 0xC6, 0xC7, 0x1B6, 0x1B7, 0x1BE, 0x1BF, 0x140...0x14F:
            return .move
        case 0x8D where insn.isMemory: return .lea
        case 0x84, 0x85, 0xA8, 0xA9: return .test
        case 0x90 where insn.rex & 1 == 0: return .nop
        case 0x118...0x11F: return .nop
        case 0x80: return .group1
        case 0xC0, 0xC1, 0xD0...0xD3: return .shift
        case 0xF6, 0xF7: return .group3
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

    /// Runs a decoded instruction through its handler: a jump table on a
    /// small enum, where `execute`'s switch compares opcode ranges in turn.
    /// Returns false with the fault or exit in `pending`, as `execute` does.
    /// Each handler is a small function of its own: the block loop keeps its
    /// few values in registers across the calls (one function holding every
    /// handler spilled them).
    @inline(always)
    mutating func dispatch(_ insn: inout Instruction) -> Bool {
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
        default: return dispatchFamily(&insn)
        }
    }

    @inline(never)
    mutating func runALURR(_ insn: inout Instruction) -> Bool {
        let size = insn.operandSize
        let operation = insn.opcode >> 3
        let (destination, source) = insn.opcode & 2 == 0 ? (insn.rm, insn.reg) : (insn.reg, insn.rm)
        let r = alu(operation, readGPR(destination, size), readGPR(source, size), size: size)
        if operation != 7 { writeGPR(destination, r, size) }
        state.rip = insn.nextRIP
        return true
    }

    @inline(never)
    mutating func runALUMR(_ insn: inout Instruction) -> Bool {
        let size = insn.operandSize
        let operation = insn.opcode >> 3
        let offset = effectiveAddress(&insn)
        guard let value = read(insn.segment, offset, size: size) else { return false }
        let r = alu(operation, value, readGPR(insn.reg, size), size: size)
        guard operation == 7 || write(insn.segment, offset, r, size: size) else { return false }
        state.rip = insn.nextRIP
        return true
    }

    @inline(never)
    mutating func runALURM(_ insn: inout Instruction) -> Bool {
        let size = insn.operandSize
        let operation = insn.opcode >> 3
        guard let value = read(insn.segment, effectiveAddress(&insn), size: size) else { return false }
        let r = alu(operation, readGPR(insn.reg, size), value, size: size)
        if operation != 7 { writeGPR(insn.reg, r, size) }
        state.rip = insn.nextRIP
        return true
    }

    @inline(never)
    mutating func runALUAccumulator(_ insn: inout Instruction) -> Bool {
        let size = insn.operandSize
        let operation = insn.opcode >> 3
        let r = alu(operation, readGPR(0, size), signExtend(insn.immediate, size: min(size, 4)), size: size)
        if operation != 7 { writeGPR(0, r, size) }
        state.rip = insn.nextRIP
        return true
    }

    @inline(never)
    mutating func runGroup1R(_ insn: inout Instruction) -> Bool {
        let size = insn.operandSize
        let operation = insn.reg & 7
        let source = signExtend(insn.immediate, size: insn.opcode == 0x81 ? min(size, 4) : 1)
        let r = alu(operation, readGPR(insn.rm, size), source, size: size)
        if operation != 7 { writeGPR(insn.rm, r, size) }
        state.rip = insn.nextRIP
        return true
    }

    @inline(never)
    mutating func runGroup1M(_ insn: inout Instruction) -> Bool {
        let size = insn.operandSize
        let operation = insn.reg & 7
        let source = signExtend(insn.immediate, size: insn.opcode == 0x81 ? min(size, 4) : 1)
        let offset = effectiveAddress(&insn)
        guard let value = read(insn.segment, offset, size: size) else { return false }
        let r = alu(operation, value, source, size: size)
        guard operation == 7 || write(insn.segment, offset, r, size: size) else { return false }
        state.rip = insn.nextRIP
        return true
    }

    @inline(never)
    mutating func runTestRR(_ insn: inout Instruction) -> Bool {
        let size = insn.operandSize
        let a = readGPR(insn.rm, size), b = readGPR(insn.reg, size)
        state.flags.record(.logic, size: size, dst: a, src: b, result: a & b)
        state.rip = insn.nextRIP
        return true
    }

    @inline(never)
    mutating func runStoreRR(_ insn: inout Instruction) -> Bool {
        let size = insn.operandSize
        writeGPR(insn.rm, readGPR(insn.reg, size), size)
        state.rip = insn.nextRIP
        return true
    }

    @inline(never)
    mutating func runLoadRR(_ insn: inout Instruction) -> Bool {
        let size = insn.operandSize
        writeGPR(insn.reg, readGPR(insn.rm, size), size)
        state.rip = insn.nextRIP
        return true
    }

    @inline(never)
    mutating func runStore(_ insn: inout Instruction) -> Bool {
        let size = insn.operandSize
        guard write(insn.segment, effectiveAddress(&insn), readGPR(insn.reg, size), size: size) else { return false }
        state.rip = insn.nextRIP
        return true
    }

    @inline(never)
    mutating func runLoad(_ insn: inout Instruction) -> Bool {
        let size = insn.operandSize
        guard let value = read(insn.segment, effectiveAddress(&insn), size: size) else { return false }
        writeGPR(insn.reg, value, size)
        state.rip = insn.nextRIP
        return true
    }

    @inline(never)
    mutating func runMoveImmediate(_ insn: inout Instruction) -> Bool {
        writeGPR((insn.opcode & 7) | (insn.rex & 1 != 0 ? 8 : 0), insn.immediate, insn.operandSize)
        state.rip = insn.nextRIP
        return true
    }

    @inline(never)
    mutating func runPush(_ insn: inout Instruction) -> Bool {
        let stackSize = stackOperandSize(insn)
        guard stackPush(readGPR((insn.opcode & 7) | (insn.rex & 1 != 0 ? 8 : 0), stackSize), size: stackSize) else {
            return false
        }
        state.rip = insn.nextRIP
        return true
    }

    @inline(never)
    mutating func runPop(_ insn: inout Instruction) -> Bool {
        let stackSize = stackOperandSize(insn)
        guard let value = stackPop(size: stackSize) else { return false }
        writeGPR((insn.opcode & 7) | (insn.rex & 1 != 0 ? 8 : 0), value, stackSize)
        state.rip = insn.nextRIP
        return true
    }

    @inline(never)
    mutating func runJcc(_ insn: inout Instruction) -> Bool {
        state.rip = state.flags.condition(insn.opcode & 0xF) ? insn.displacement : insn.nextRIP
        return true
    }

    @inline(never)
    mutating func runJump(_ insn: inout Instruction) -> Bool {
        state.rip = insn.displacement
        return true
    }

    @inline(never)
    mutating func runCall(_ insn: inout Instruction) -> Bool {
        guard stackPush(insn.nextRIP, size: stackOperandSize(insn)) else { return false }
        state.rip = insn.displacement
        return true
    }

    @inline(never)
    mutating func runRet(_ insn: inout Instruction) -> Bool {
        guard let target = stackPop(size: stackOperandSize(insn)) else { return false }
        state.rip = target
        return true
    }

    @inline(never)
    mutating func runIncDecR(_ insn: inout Instruction) -> Bool {
        let size = insn.operandSize
        // 40-4F name the register in the opcode, FF in ModRM.rm.
        let index = insn.opcode == 0xFF ? insn.rm : insn.opcode & 7
        writeGPR(index, incDec(readGPR(index, size), size: size, decrement: insn.handler == .decR), size)
        state.rip = insn.nextRIP
        return true
    }

    /// The family handlers and `execute`, for the instructions without a handler of their own.
    @inline(never)
    mutating func dispatchFamily(_ insn: inout Instruction) -> Bool {
        if insn.hasModRM && insn.mod != 3 { insn.offset = effectiveAddress(&insn) }
        switch insn.handler {
        case .barrier:
            invalidateContext()
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
    @inline(__always)
    mutating func readGPR(_ index: Int, _ size: Int) -> UInt64 {
        state.reg(index) & sizeMask(size)
    }

    /// Writes a general register at operand size 2, 4 or 8: 16 bits merge,
    /// 32 bits zero the upper half.
    @inline(__always)
    mutating func writeGPR(_ index: Int, _ value: UInt64, _ size: Int) {
        if size == 2 {
            state.setReg(index, (state.reg(index) & ~0xFFFF) | (value & 0xFFFF))
        } else {
            state.setReg(index, value & sizeMask(size))
        }
    }

    /// `push`, with the stack's address size of the fetch state (only a barrier changes SS or the mode).
    @inline(__always)
    mutating func stackPush(_ value: UInt64, size: Int) -> Bool {
        let addressSize = codePage.stackSize
        let rsp = (state.reg(4) &- UInt64(truncatingIfNeeded: size)) & sizeMask(addressSize)
        guard write(SegmentRegisterName.ss.rawValue, rsp, value, size: size) else { return false }
        state.write(4, rsp, size: addressSize, legacyHighBytes: false)
        return true
    }

    /// `pop`, in the same way.
    @inline(__always)
    mutating func stackPop(size: Int) -> UInt64? {
        let addressSize = codePage.stackSize
        let rsp = state.reg(4)
        guard let value = read(SegmentRegisterName.ss.rawValue, rsp & sizeMask(addressSize), size: size) else { return nil }
        state.write(4, (rsp &+ UInt64(truncatingIfNeeded: size)) & sizeMask(addressSize), size: addressSize, legacyHighBytes: false)
        return value
    }
}
