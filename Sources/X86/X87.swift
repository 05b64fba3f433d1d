// The x87 control instructions (FNINIT, FNCLEX, FLDCW, FNSTCW, FNSTSW,
// FNSTENV/FLDENV, FNSAVE/FRSTOR, FWAIT), and 0F AE: FXSAVE/FXRSTOR,
// LDMXCSR/STMXCSR, CLFLUSH and the fences (Intel SDM Vol. 1 8.1, 8.3.13,
// 10.5; Vol. 2). Layouts and the bits the CPU forces were checked against
// the host CPU (Tests/X86Tests/X87ControlTests.swift).
//
// An x87 instruction takes #NM while CR0.EM or CR0.TS is set; a waiting
// one also takes #MF for a pending unmasked exception (FSW.ES), which the
// no-wait control forms (FN...) do not check. The data instructions
// (everything of D8-DF not here, FNOP and SSE3's FISTTP included) are in
// X87Arithmetic.swift.

import Synchronization

extension X86CPU {
    /// D8-DF and 9B (FWAIT).
    mutating func executeX87(_ insn: inout Instruction) -> Bool {
        if insn.opcode == 0x9B {
            let both = ControlBits.cr0MP | ControlBits.cr0TS
            if state.cr0 & both == both { return fault(.nm) }
            guard x87ExceptionCheck() else { return false }
            state.rip = insn.nextRIP
            return true
        }
        if state.cr0 & (ControlBits.cr0EM | ControlBits.cr0TS) != 0 { return fault(.nm) }
        let handled: Bool
        if insn.isMemory {
            switch (insn.opcode, insn.reg & 7) {
            case (0xD9, 4): handled = executeLoadEnvironment(&insn, withRegisters: false)
            case (0xD9, 5):  // FLDCW m16
                guard let value = read(insn.segment, insn.offset, size: 2) else { return false }
                state.fpu.fcw = FloatingPointState.controlWord(UInt16(truncatingIfNeeded: value))
                state.fpu.updateErrorSummary()
                handled = true
            case (0xD9, 6): handled = executeStoreEnvironment(&insn, withRegisters: false)
            case (0xD9, 7):  // FNSTCW m16
                handled = write(insn.segment, insn.offset, UInt64(state.fpu.fcw), size: 2)
            case (0xDD, 4): handled = executeLoadEnvironment(&insn, withRegisters: true)
            case (0xDD, 6): handled = executeStoreEnvironment(&insn, withRegisters: true)
            case (0xDD, 7):  // FNSTSW m16
                handled = write(insn.segment, insn.offset, UInt64(state.fpu.fsw), size: 2)
            default:
                return executeX87Arithmetic(&insn)
            }
        } else {
            let modrm = 0xC0 | (insn.reg & 7) << 3 | (insn.rm & 7)
            switch (insn.opcode, modrm) {
            case (0xDB, 0xE3):  // FNINIT
                state.fpu.initializeX87()
                handled = true
            case (0xDB, 0xE2):  // FNCLEX: the exception flags, SF, ES and B
                state.fpu.fsw &= 0x7F00
                handled = true
            case (0xDB, 0xE0), (0xDB, 0xE1), (0xDB, 0xE4):  // FNENI, FNDISI, FNSETPM: no-ops since the 387
                handled = true
            case (0xDF, 0xE0):  // FNSTSW AX
                state.write(0, UInt64(state.fpu.fsw), size: 2, legacyHighBytes: false)
                handled = true
            default:
                return executeX87Arithmetic(&insn)
            }
        }
        guard handled else { return false }
        state.rip = insn.nextRIP
        return true
    }

    // MARK: Environment

    /// The FNSTENV/FLDENV image size: 14 bytes with a 16-bit operand size, 28 otherwise.
    func environmentSize(_ insn: Instruction) -> Int { insn.operandSize == 2 ? 14 : 28 }

    /// Writes the x87 environment (SDM Vol. 1 figures 8-9 to 8-12): the
    /// protected-mode layout with FCS and FDS, or the real-mode one with
    /// 20/32-bit pointers; reserved halves of the 32-bit layout read FFFFh.
    mutating func storeEnvironment(to image: UnsafeMutableRawPointer, size: Int) {
        let f = state.fpu
        let tagWord = state.fpu.fullTagWord()
        let real = state.mode == .real
        let fop = UInt32(f.fop & 0x7FF)
        if size == 28 {
            func word(_ offset: Int, _ value: UInt32) { image.storeBytes(of: value, toByteOffset: offset, as: UInt32.self) }
            word(0, 0xFFFF_0000 | UInt32(f.fcw))
            word(4, 0xFFFF_0000 | UInt32(f.fsw))
            word(8, 0xFFFF_0000 | UInt32(tagWord))
            if real {
                word(12, 0xFFFF_0000 | UInt32(f.fip & 0xFFFF))
                word(16, UInt32((f.fip >> 16) & 0xFFFF) << 12 | fop)
                word(20, 0xFFFF_0000 | UInt32(f.fdp & 0xFFFF))
                word(24, UInt32((f.fdp >> 16) & 0xFFFF) << 12)
            } else {
                word(12, UInt32(truncatingIfNeeded: f.fip))
                word(16, fop << 16 | UInt32(f.fcs))
                word(20, UInt32(truncatingIfNeeded: f.fdp))
                word(24, 0xFFFF_0000 | UInt32(f.fds))
            }
        } else {
            func half(_ offset: Int, _ value: UInt16) { image.storeBytes(of: value, toByteOffset: offset, as: UInt16.self) }
            half(0, f.fcw)
            half(2, f.fsw)
            half(4, tagWord)
            if real {
                half(6, UInt16(truncatingIfNeeded: f.fip))
                half(8, UInt16((f.fip >> 16) & 0xF) << 12 | UInt16(fop))
                half(10, UInt16(truncatingIfNeeded: f.fdp))
                half(12, UInt16((f.fdp >> 16) & 0xF) << 12)
            } else {
                half(6, UInt16(truncatingIfNeeded: f.fip))
                half(8, f.fcs)
                half(10, UInt16(truncatingIfNeeded: f.fdp))
                half(12, f.fds)
            }
        }
    }

    mutating func loadEnvironment(from image: UnsafeRawPointer, size: Int) {
        let real = state.mode == .real
        var fpu = state.fpu
        let tagWord: UInt16
        if size == 28 {
            func word(_ offset: Int) -> UInt32 { image.loadUnaligned(fromByteOffset: offset, as: UInt32.self) }
            fpu.fcw = FloatingPointState.controlWord(UInt16(truncatingIfNeeded: word(0)))
            fpu.fsw = UInt16(truncatingIfNeeded: word(4))
            tagWord = UInt16(truncatingIfNeeded: word(8))
            if real {
                fpu.fip = UInt64(word(12) & 0xFFFF) | UInt64((word(16) >> 12) & 0xFFFF) << 16
                fpu.fop = UInt16(word(16) & 0x7FF)
                fpu.fdp = UInt64(word(20) & 0xFFFF) | UInt64((word(24) >> 12) & 0xFFFF) << 16
            } else {
                fpu.fip = UInt64(word(12))
                fpu.fcs = UInt16(truncatingIfNeeded: word(16))
                fpu.fop = UInt16((word(16) >> 16) & 0x7FF)
                fpu.fdp = UInt64(word(20))
                fpu.fds = UInt16(truncatingIfNeeded: word(24))
            }
        } else {
            func half(_ offset: Int) -> UInt16 { image.loadUnaligned(fromByteOffset: offset, as: UInt16.self) }
            fpu.fcw = FloatingPointState.controlWord(half(0))
            fpu.fsw = half(2)
            tagWord = half(4)
            if real {
                fpu.fip = UInt64(half(6)) | UInt64(half(8) >> 12) << 16
                fpu.fop = half(8) & 0x7FF
                fpu.fdp = UInt64(half(10)) | UInt64(half(12) >> 12) << 16
            } else {
                fpu.fip = UInt64(half(6))
                fpu.fcs = half(8)
                fpu.fdp = UInt64(half(10))
                fpu.fds = half(12)
            }
        }
        fpu.tags = FloatingPointState.abridged(tagWord)
        fpu.updateErrorSummary()
        state.fpu = fpu
    }

    /// D9 /6 FNSTENV (then every exception masked) and DD /6 FNSAVE (the
    /// environment, ST0-ST7 as 10 bytes each, then FNINIT).
    mutating func executeStoreEnvironment(_ insn: inout Instruction, withRegisters: Bool) -> Bool {
        let size = environmentSize(insn)
        let total = size + (withRegisters ? 80 : 0)
        return withUnsafeTemporaryAllocation(byteCount: 108, alignment: 16) { buffer in
            guard let image = buffer.baseAddress else { return false }
            storeEnvironment(to: image, size: size)
            if withRegisters {
                for index in 0..<8 { X87Value(slot: state.fpu.st(index)).store(to: image + size + 10 * index) }
            }
            guard let address = checkedLinear(insn.segment, insn.offset, size: total, write: true),
                  copyLinear(address, UnsafeMutableRawBufferPointer(start: image, count: total), write: true) else { return false }
            if withRegisters {
                state.fpu.initializeX87()
            } else {
                state.fpu.fcw |= 0x3F
            }
            return true
        }
    }

    /// D9 /4 FLDENV and DD /4 FRSTOR.
    mutating func executeLoadEnvironment(_ insn: inout Instruction, withRegisters: Bool) -> Bool {
        let size = environmentSize(insn)
        let total = size + (withRegisters ? 80 : 0)
        return withUnsafeTemporaryAllocation(byteCount: 108, alignment: 16) { buffer in
            guard let image = buffer.baseAddress else { return false }
            guard let address = checkedLinear(insn.segment, insn.offset, size: total, write: false),
                  copyLinear(address, UnsafeMutableRawBufferPointer(start: image, count: total), write: false) else { return false }
            loadEnvironment(from: image, size: size)
            if withRegisters {
                for index in 0..<8 { state.fpu.setST(index, X87Value(bytes: image + size + 10 * index)) }
            }
            return true
        }
    }

    // MARK: 0F AE

    /// 0F AE: /0 FXSAVE, /1 FXRSTOR, /2 LDMXCSR, /3 STMXCSR, /7 CLFLUSH
    /// (memory forms, no prefix); E8 LFENCE, F0 MFENCE, F8 SFENCE. XSAVE,
    /// XRSTOR, XSAVEOPT, CLFLUSHOPT, CLWB and the FS/GS base instructions
    /// are not advertised and give #UD.
    mutating func executeGroup15(_ insn: inout Instruction) -> Bool {
        let kind = insn.reg & 7
        guard simdPrefix(insn) == 0 else { return undefined() }
        if !insn.isMemory {
            switch kind {
            case 5: break  // LFENCE: the interpreter's loads are already in order
            case 6, 7: atomicMemoryFence(ordering: .sequentiallyConsistent)  // MFENCE, SFENCE, for the other vCPU threads
            default: return undefined()
            }
            state.rip = insn.nextRIP
            return true
        }
        switch kind {
        case 0, 1:
            guard executeFXSAVE(&insn, restore: kind == 1) else { return false }
        case 2, 3:
            guard sseReady() else { return false }
            if kind == 3 {
                guard write(insn.segment, insn.offset, UInt64(state.fpu.mxcsr), size: 4) else { return false }
            } else {
                guard let value = read(insn.segment, insn.offset, size: 4) else { return false }
                let mxcsr = UInt32(truncatingIfNeeded: value)
                if mxcsr & ~FloatingPointState.mxcsrMask != 0 { return fault(.gp, errorCode: 0) }
                state.fpu.mxcsr = mxcsr
            }
        case 7:  // CLFLUSH: the line must be reachable as for a read; there is no cache to flush
            guard let address = checkedLinear(insn.segment, insn.offset, size: 1, write: false),
                  translate(address, .read) != nil else { return false }
        default:
            return undefined()
        }
        state.rip = insn.nextRIP
        return true
    }

    /// FXSAVE and FXRSTOR m512: 16-byte aligned (#GP(0)), #NM with CR0.EM
    /// or CR0.TS; REX.W selects the 64-bit layout; XMM8-15 only in 64-bit
    /// mode; FXRSTOR takes #GP(0) for reserved MXCSR bits. XMM and MXCSR
    /// move whatever CR4.OSFXSR says (which the SDM leaves to the CPU).
    mutating func executeFXSAVE(_ insn: inout Instruction, restore: Bool) -> Bool {
        if state.cr0 & (ControlBits.cr0EM | ControlBits.cr0TS) != 0 { return fault(.nm) }
        guard let address = checkedLinear(insn.segment, insn.offset, size: 512, write: !restore) else { return false }
        if address & 15 != 0 { return fault(.gp, errorCode: 0) }
        let layout64 = insn.mode64 && insn.rex & 8 != 0
        let xmmCount = insn.mode64 ? 16 : 8
        return withUnsafeTemporaryAllocation(byteCount: 512, alignment: 16) { buffer in
            guard let image = buffer.baseAddress else { return false }
            if restore {
                guard copyLinear(address, buffer, write: false) else { return false }
                let mxcsr = image.load(fromByteOffset: 24, as: UInt32.self)
                if mxcsr & ~FloatingPointState.mxcsrMask != 0 { return fault(.gp, errorCode: 0) }
                state.fpu.loadFXSAVE(from: image, layout64: layout64, xmmCount: xmmCount)
                state.fpu.updateErrorSummary()
                return true
            }
            // Bytes 416-511 (and XMM8-15's outside 64-bit mode) are left as they are in memory.
            state.fpu.storeFXSAVE(to: image, layout64: layout64, xmmCount: xmmCount)
            return copyLinear(address, UnsafeMutableRawBufferPointer(start: image, count: 160 + 16 * xmmCount), write: true)
        }
    }
}
