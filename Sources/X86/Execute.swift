// Dispatch: one `switch` over the opcode, to the instruction families'
// handlers. A handler returns false after storing a fault or exit; RIP then
// stays at the instruction unless the exit says otherwise.

extension X86CPU {
    mutating func execute(_ insn: inout Instruction) -> Bool {
        let op = insn.opcode
        if insn.lock {
            guard isLockable(insn) else { return undefined() }
            return executeLocked(&insn)
        }
        switch op {
        case 0x00...0x3F where op & 7 < 6:
            guard executeALU(&insn) else { return false }
        case 0x40...0x4F:  // INC/DEC r (not in 64-bit mode, where 40-4F are REX)
            guard executeIncDecRegister(&insn) else { return false }
        case 0x06, 0x07, 0x0E, 0x16, 0x17, 0x1E, 0x1F, 0x1A0, 0x1A1, 0x1A8, 0x1A9:
            guard !insn.mode64 || op >= 0x100 else { return undefined() }
            guard executeSegmentPushPop(&insn) else { return false }
        case 0x50...0x5F, 0x68, 0x6A, 0x8F:
            guard executePushPop(&insn) else { return false }
        case 0x63 where !insn.mode64:
            return executeARPL(&insn)
        case 0x63, 0x88...0x8C, 0x8E, 0xA0...0xA3, 0xB0...0xBF, 0xC6, 0xC7, 0x1B6, 0x1B7, 0x1BE, 0x1BF,
             0x140...0x14F:
            guard executeMove(&insn) else { return false }
        case 0x8D:
            guard insn.isMemory else { return undefined() }
            state.write(insn.reg, insn.offset, size: insn.operandSize, legacyHighBytes: false)
        case 0x84, 0x85, 0xA8, 0xA9:
            guard executeTest(&insn) else { return false }
        case 0x86...0x87 where insn.isMemory:  // always locked
            return executeLocked(&insn)
        case 0x86, 0x87, 0x90...0x97:
            if op == 0x90 && insn.rex & 1 == 0 { break }  // NOP and PAUSE
            guard executeExchange(&insn) else { return false }
        case 0x98, 0x99:
            executeConvert(&insn)
        case 0x69, 0x6B, 0x1AF:
            guard executeIMulTwoOperand(&insn) else { return false }
        case 0x80...0x83:
            guard op != 0x82 || !insn.mode64 else { return undefined() }
            guard executeGroup1(&insn) else { return false }
        case 0xC0, 0xC1, 0xD0...0xD3:
            guard executeShift(&insn) else { return false }
        case 0xF6, 0xF7:
            guard executeGroup3(&insn) else { return false }
        case 0xFE:
            guard insn.reg & 7 < 2 else { return undefined() }
            guard executeIncDec(&insn, size: 1, decrement: insn.reg & 7 == 1) else { return false }
        case 0xFF:
            switch insn.reg & 7 {
            case 0, 1:
                guard executeIncDec(&insn, size: insn.operandSize, decrement: insn.reg & 7 == 1) else { return false }
            case 6:
                guard executePushPop(&insn) else { return false }
            case 2, 4:
                // Branches set RIP themselves.
                return executeControlFlow(&insn)
            case 3:
                return executeFarCall(&insn)
            case 5:
                return executeFarJump(&insn)
            default:
                return undefined()
            }
        case 0x70...0x7F, 0x180...0x18F, 0xE0...0xE3, 0xE8, 0xE9, 0xEB, 0xC2, 0xC3:
            return executeControlFlow(&insn)
        case 0x190...0x19F:
            guard writeOperand(insn, state.flags.condition(op & 0xF) ? 1 : 0, size: 1) else { return false }
        case 0xC9:
            guard executeLeave(&insn) else { return false }
        case 0xA4...0xA7, 0xAA...0xAF:
            return executeString(&insn)
        case 0xE4...0xE7, 0xEC...0xEF:
            return executePortIO(&insn)
        case 0xF4:
            guard state.privilegeLevel() == 0 else { return fault(.gp, errorCode: 0) }
            state.rip = insn.nextRIP
            return exit(.halt)
        case 0xF5, 0xF8...0xFD, 0x9C...0x9F:
            guard executeFlagInstruction(&insn) else { return false }
        case 0x118...0x11F:  // hint NOPs, 0F 1F /0 the multi-byte NOP
            break
        // System instructions set RIP themselves.
        case 0x101:
            return executeGroup7(&insn)
        case 0x120, 0x122:
            return executeMoveControl(&insn)
        case 0x130, 0x132:
            return executeMSR(&insn)
        case 0x131:
            return executeRDTSC(&insn)
        case 0x1A2:
            return executeCPUID(&insn)
        case 0xEA:
            return executeFarJump(&insn)
        // Far transfers and system calls (FarTransfers.swift, SystemCalls.swift).
        case 0x9A:
            return executeFarCall(&insn)
        case 0xCA, 0xCB:
            return executeFarReturn(&insn)
        case 0x105:
            return executeSyscall(&insn)
        case 0x107:
            return executeSysret(&insn)
        case 0x134:
            return executeSysenter(&insn)
        case 0x135:
            return executeSysexit(&insn)
        // Descriptors (DescriptorInstructions.swift), debug registers, caches.
        case 0x100:
            return executeGroup6(&insn)
        case 0x102, 0x103:
            return executeLARLSL(&insn)
        case 0x106, 0x108, 0x109:
            return executeCacheOrCLTS(&insn)
        case 0x121, 0x123:
            return executeMoveDebug(&insn)
        case 0x1A3, 0x1AB, 0x1B3, 0x1BB, 0x1BA:
            return executeBitTest(&insn)
        case 0x6C...0x6F:
            return executeStringPortIO(&insn)
        case 0xCC, 0xCD:
            return executeSoftwareInterrupt(&insn)
        case 0xCF:
            return executeIRET(&insn)
        case 0x10B:  // UD2
            return undefined()
        case 0xF1:
            return executeICEBP(&insn)
        // The rest of the integer set (Exchange, BitScan, DoubleShift, StackFrames, FarPointer, BCD, IntegerMisc).
        case 0x1B0, 0x1B1:
            guard executeCompareExchange(&insn) else { return false }
        case 0x1C0, 0x1C1:
            guard executeExchangeAdd(&insn) else { return false }
        case 0x1C7:
            guard executeGroup9(&insn) else { return false }
        case 0x1C8...0x1CF:
            executeByteSwap(&insn)
        case 0x1B8, 0x1BC, 0x1BD:
            guard executeBitScan(&insn) else { return false }
        case 0x1A4, 0x1A5, 0x1AC, 0x1AD:
            guard executeDoubleShift(&insn) else { return false }
        case 0xC8:
            guard executeEnter(&insn) else { return false }
        case 0x60:
            guard executePushAll(&insn) else { return false }
        case 0x61:
            guard executePopAll(&insn) else { return false }
        case 0xC4, 0xC5, 0x1B2, 0x1B4, 0x1B5:
            guard executeLoadFarPointer(&insn) else { return false }
        case 0x27, 0x2F, 0x37, 0x3F, 0xD4, 0xD5:
            guard executeDecimalAdjust(&insn) else { return false }
        case 0x62:
            guard executeBound(&insn) else { return false }
        case 0xCE:
            return executeInterruptOnOverflow(&insn)
        case 0xD7:
            guard executeTranslate(&insn) else { return false }
        case 0xD8...0xDF, 0x9B:  // x87 (X87.swift)
            return executeX87(&insn)
        case 0x10D, 0x110...0x117, 0x128...0x12F, 0x150...0x17F, 0x1AE, 0x1C2...0x1C6, 0x1D0...0x1FF:  // MMX, SSE, SSE2 (SIMD.swift)
            return executeSIMD(&insn)
        case 0x200...0x3FF:  // the 0F 38 and 0F 3A maps: SSSE3 (SSSE3.swift)
            return executeSSSE3(&insn)
        default:
            return undefined()
        }
        state.rip = insn.nextRIP
        return true
    }

    /// LOCK is allowed only on read-modify-write instructions with a memory destination.
    func isLockable(_ insn: Instruction) -> Bool {
        guard insn.hasModRM && insn.isMemory else { return false }
        let op = insn.opcode
        switch op {
        case 0x00...0x3F: return op & 7 < 2 && op >> 3 != 7
        case 0x80...0x83: return insn.reg & 7 != 7
        case 0x86, 0x87: return true
        case 0xF6, 0xF7: return insn.reg & 7 == 2 || insn.reg & 7 == 3
        case 0xFE, 0xFF: return insn.reg & 7 < 2
        case 0x1AB, 0x1B3, 0x1BB, 0x1B0, 0x1B1, 0x1C0, 0x1C1: return true
        case 0x1BA: return insn.reg & 7 >= 5
        case 0x1C7: return insn.reg & 7 == 1
        default: return false
        }
    }

    // MARK: Operands

    /// The r/m operand: a register when mod = 3, else memory.
    @inline(__always)
    mutating func readOperand(_ insn: Instruction, size: Int) -> UInt64? {
        if insn.mod == 3 { return state.read(insn.rm, size: size, legacyHighBytes: insn.legacyHighBytes) }
        return read(insn.segment, insn.offset, size: size)
    }

    @inline(__always)
    mutating func writeOperand(_ insn: Instruction, _ value: UInt64, size: Int) -> Bool {
        if insn.mod == 3 {
            state.write(insn.rm, value, size: size, legacyHighBytes: insn.legacyHighBytes)
            return true
        }
        return write(insn.segment, insn.offset, value, size: size)
    }

    @inline(__always)
    mutating func readRegister(_ insn: Instruction, size: Int) -> UInt64 {
        state.read(insn.reg, size: size, legacyHighBytes: insn.legacyHighBytes)
    }

    @inline(__always)
    mutating func writeRegister(_ insn: Instruction, _ value: UInt64, size: Int) {
        state.write(insn.reg, value, size: size, legacyHighBytes: insn.legacyHighBytes)
    }

    /// The immediate of size `size` (Iz: at most 4 bytes), sign-extended to the operand size.
    @inline(__always)
    func signedImmediate(_ insn: Instruction, immediateSize: Int) -> UInt64 {
        signExtend(insn.immediate, size: immediateSize)
    }
}
