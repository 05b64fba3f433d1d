// MMX, SSE and SSE2 instructions of the 0F map (Intel SDM Vol. 2): the
// mandatory prefix (none, 66, F3 or F2; F3/F2 win over 66) picks the form.
// Readiness follows the SDM's exception tables: an XMM instruction takes
// #UD with CR0.EM set or CR4.OSFXSR clear and #NM with CR0.TS set; an MMX
// one #UD with CR0.EM, #NM with CR0.TS and #MF for a pending x87
// exception; unmasked SIMD floating-point exceptions give #XM (#UD when
// CR4.OSXMMEXCPT is clear). Legacy SSE 16-byte memory operands must be
// 16-byte aligned (#GP(0)) except for the unaligned moves.

extension ControlBits {
    public static let cr0NE: UInt64 = 1 << 5
    public static let cr4OSFXSR: UInt64 = 1 << 9
    public static let cr4OSXMMEXCPT: UInt64 = 1 << 10
}

extension X86CPU {
    // MARK: Readiness

    /// The mandatory prefix: 0xF3 or 0xF2, else 0x66, else 0.
    @inline(__always)
    func simdPrefix(_ insn: Instruction) -> Int {
        insn.rep != 0 ? Int(insn.rep) : (insn.operandSizePrefix ? 0x66 : 0)
    }

    mutating func sseReady() -> Bool {
        if state.cr0 & ControlBits.cr0EM != 0 || state.cr4 & ControlBits.cr4OSFXSR == 0 { return undefined() }
        if state.cr0 & ControlBits.cr0TS != 0 { return fault(.nm) }
        return true
    }

    mutating func mmxReady() -> Bool {
        if state.cr0 & ControlBits.cr0EM != 0 { return undefined() }
        if state.cr0 & ControlBits.cr0TS != 0 { return fault(.nm) }
        return x87ExceptionCheck()
    }

    /// #MF for a pending unmasked x87 exception (with CR0.NE clear the
    /// PC-style FERR# line is not modelled and nothing happens).
    mutating func x87ExceptionCheck() -> Bool {
        if state.fpu.exceptionPending && state.cr0 & ControlBits.cr0NE != 0 { return fault(.mf) }
        return true
    }

    /// Sets the MXCSR flags of an operation and reports whether it may
    /// write its result (SDM 11.5.2).
    mutating func commitSIMDExceptions(_ exceptions: SIMDExceptions) -> Bool {
        let masks = (state.fpu.mxcsr >> 7) & MXCSRFlag.all
        if exceptions.pre & ~masks != 0 {
            state.fpu.mxcsr |= exceptions.pre
            return simdException()
        }
        let all = exceptions.pre | exceptions.post
        state.fpu.mxcsr |= all
        if all & ~masks != 0 { return simdException() }
        return true
    }

    mutating func simdException() -> Bool {
        state.cr4 & ControlBits.cr4OSXMMEXCPT != 0 ? fault(.xm) : undefined()
    }

    // MARK: Operands

    /// `size` bytes (4, 8 or 16) of the memory operand, zero-extended.
    mutating func readVector(_ insn: Instruction, size: Int, aligned: Bool = false) -> UInt128? {
        guard let address = checkedLinear(insn.segment, insn.offset, size: size, write: false) else { return nil }
        if size < 16 {
            guard let value = readLinear(address, size: size) else { return nil }
            return UInt128(value)
        }
        if aligned && address & 15 != 0 { _ = fault(.gp, errorCode: 0); return nil }
        var value: UInt128 = 0
        guard withUnsafeMutableBytes(of: &value, { copyLinear(address, $0, write: false) }) else { return nil }
        return value
    }

    mutating func writeVector(_ insn: Instruction, _ value: UInt128, size: Int, aligned: Bool = false) -> Bool {
        guard let address = checkedLinear(insn.segment, insn.offset, size: size, write: true) else { return false }
        if size < 16 { return writeLinear(address, UInt64(truncatingIfNeeded: value), size: size) }
        if aligned && address & 15 != 0 { return fault(.gp, errorCode: 0) }
        var copy = value
        return withUnsafeMutableBytes(of: &copy) { copyLinear(address, $0, write: true) }
    }

    /// Copies between guest linear memory and `buffer` (at most a page and
    /// a bit): every page is translated and found in RAM before a byte
    /// moves, so that a fault leaves memory and buffer as they were. More
    /// than 8 bytes at once outside RAM (MMIO) is not modelled: KVM splits
    /// such accesses into several exits; this CPU reports an emulation failure.
    mutating func copyLinear(_ address: UInt64, _ buffer: UnsafeMutableRawBufferPointer, write: Bool) -> Bool {
        guard let base = buffer.baseAddress else { return true }
        let count = buffer.count
        let firstCount = min(count, 0x1000 - Int(address & 0xFFF))
        let secondAddress = address &+ UInt64(firstCount)
        let access: Access = write ? .write : .read
        guard let first = translate(address, access) else { return false }
        var second: UInt64 = 0
        if firstCount < count {
            guard count - firstCount <= 0x1000, let physical = translate(secondAddress, access) else { return false }
            second = physical
        }
        guard let firstHost = hostPointer(first, size: firstCount, write: write) else {
            pending = .emulationFailure(address: first)
            return false
        }
        var secondHost: UnsafeMutableRawPointer? = nil
        if firstCount < count {
            guard let host = hostPointer(second, size: count - firstCount, write: write) else {
                pending = .emulationFailure(address: second)
                return false
            }
            secondHost = host
        }
        if write {
            firstHost.copyMemory(from: base, byteCount: firstCount)
            secondHost?.copyMemory(from: base + firstCount, byteCount: count - firstCount)
        } else {
            base.copyMemory(from: firstHost, byteCount: firstCount)
            if let secondHost { (base + firstCount).copyMemory(from: secondHost, byteCount: count - firstCount) }
        }
        return true
    }

    /// The xmm/m operand: the whole register, or `size` bytes of memory.
    @inline(__always)
    mutating func xmmOperand(_ insn: Instruction, size: Int, aligned: Bool) -> UInt128? {
        if insn.mod == 3 { return state.fpu.xmm(insn.rm) }
        return readVector(insn, size: size, aligned: aligned)
    }

    /// The xmm/m operand of a form with packed and scalar variants, after
    /// SSE's own checks (`sseReady`): 16 aligned bytes packed, `scalarSize`
    /// bytes (any alignment) scalar. Nil after storing the fault.
    mutating func sseSource(_ insn: Instruction, scalar: Bool, scalarSize: Int) -> UInt128? {
        guard sseReady() else { return nil }
        return xmmOperand(insn, size: scalar ? scalarSize : 16, aligned: !scalar)
    }

    /// Writes an XMM result once the instruction's SIMD exceptions allow it:
    /// an unmasked one faults and leaves the destination as it was.
    mutating func commitXMM(_ insn: Instruction, _ result: UInt128, _ exceptions: SIMDExceptions) -> Bool {
        guard commitSIMDExceptions(exceptions) else { return false }
        state.fpu.setXMM(insn.reg, result)
        return true
    }

    /// `count` lanes of `fromWidth` bits of `source`, each converted into a
    /// lane of `toWidth` bits of a zeroed result, which is written once no
    /// lane's exception faults.
    mutating func convertLanes(_ insn: Instruction, _ source: UInt128, count: Int, from fromWidth: Int, to toWidth: Int,
                               _ convert: (UInt64, inout FloatEnvironment) -> UInt64) -> Bool {
        var env = FloatEnvironment(mxcsr: state.fpu.mxcsr)
        var exceptions = SIMDExceptions()
        var result: UInt128 = 0
        for index in 0..<count {
            result = replacing(result, index, width: toWidth, with: convert(element(source, index, width: fromWidth), &env))
            exceptions.record(&env)
        }
        return commitXMM(insn, result, exceptions)
    }

    /// The mm/m64 operand.
    @inline(__always)
    mutating func mmxOperand(_ insn: Instruction) -> UInt64? {
        if insn.mod == 3 { return state.fpu.mm(insn.rm) }
        return read(insn.segment, insn.offset, size: 8)
    }

    // MARK: Dispatch

    /// 0F 0D, 0F 10-17, 28-2F, 50-7F, AE, C2-C6, D0-FF (SSE3's among them).
    mutating func executeSIMD(_ insn: inout Instruction) -> Bool {
        let op = insn.opcode & 0xFF
        let prefix = simdPrefix(insn)
        switch op {
        case 0x0D:  // PREFETCHW: a hint
            guard insn.isMemory else { return undefined() }
        case 0xAE:
            return executeGroup15(&insn)
        case 0x10...0x17, 0x28, 0x29, 0x2B, 0x50, 0x54...0x57, 0xC6:
            guard executeSSEMove(&insn, op, prefix) else { return false }
        case 0x2A, 0x2C, 0x2D, 0x5A, 0x5B, 0xE6:
            guard executeSSEConversion(&insn, op, prefix) else { return false }
        case 0x2E, 0x2F:
            guard executeCompareScalarToFlags(&insn, op, prefix) else { return false }
        case 0x51, 0x58...0x5F, 0xC2:
            guard executeSSEArithmetic(&insn, op, prefix) else { return false }
        case 0x52, 0x53:
            guard executeSSEApproximation(&insn, op, prefix) else { return false }
        case 0x7C, 0x7D, 0xD0, 0xF0:  // SSE3.swift
            guard executeSSE3(&insn, op, prefix) else { return false }
        default:
            guard executeSIMDInteger(&insn, op, prefix) else { return false }
        }
        state.rip = insn.nextRIP
        return true
    }

    // MARK: Floating-point arithmetic

    /// ADD MUL SUB MIN DIV MAX SQRT CMP, in PS (none), PD (66), SS (F3) and SD (F2) forms.
    mutating func executeSSEArithmetic(_ insn: inout Instruction, _ op: Int, _ prefix: Int) -> Bool {
        let double = prefix == 0x66 || prefix == 0xF2
        let scalar = prefix == 0xF3 || prefix == 0xF2
        let width = double ? 64 : 32
        guard let source = sseSource(insn, scalar: scalar, scalarSize: width / 8) else { return false }
        var exceptions = SIMDExceptions()
        let result = SIMDFloat.apply(op, state.fpu.xmm(insn.reg), source, lanes: scalar ? 1 : 128 / width, width: width,
                                     predicate: Int(insn.immediate & 7), mxcsr: state.fpu.mxcsr, &exceptions)
        return commitXMM(insn, result, exceptions)
    }

    /// RSQRTPS/SS (52) and RCPPS/SS (53): no 66 or F2 forms; no flags.
    mutating func executeSSEApproximation(_ insn: inout Instruction, _ op: Int, _ prefix: Int) -> Bool {
        guard prefix == 0 || prefix == 0xF3 else { return undefined() }
        let scalar = prefix == 0xF3
        guard let source = sseSource(insn, scalar: scalar, scalarSize: 4) else { return false }
        var result = state.fpu.xmm(insn.reg)
        for index in 0..<(scalar ? 1 : 4) {
            let value = element(source, index, width: 32)
            let approximation = op == 0x53 ? SIMDFloat.reciprocal(value) : SIMDFloat.reciprocalSquareRoot(value)
            result = replacing(result, index, width: 32, with: approximation)
        }
        state.fpu.setXMM(insn.reg, result)
        return true
    }

    /// UCOMISS/COMISS (none), UCOMISD/COMISD (66): ZF PF CF from the
    /// comparison (111 unordered, 000 greater, 001 less, 100 equal), OF SF AF clear.
    mutating func executeCompareScalarToFlags(_ insn: inout Instruction, _ op: Int, _ prefix: Int) -> Bool {
        guard prefix == 0 || prefix == 0x66 else { return undefined() }
        let double = prefix == 0x66
        guard let source = sseSource(insn, scalar: true, scalarSize: double ? 8 : 4) else { return false }
        let width = double ? 64 : 32
        let a = element(state.fpu.xmm(insn.reg), 0, width: width), b = element(source, 0, width: width)
        var env = FloatEnvironment(mxcsr: state.fpu.mxcsr)
        let signaling = op == 0x2F
        let order = double ? SoftFloat<Binary64>.compare(a, b, signaling: signaling, &env)
            : SoftFloat<Binary32>.compare(a, b, signaling: signaling, &env)
        var exceptions = SIMDExceptions()
        exceptions.record(&env)
        guard commitSIMDExceptions(exceptions) else { return false }
        let flags: UInt64
        switch order {
        case .unordered: flags = RFLAGS.zf | RFLAGS.pf | RFLAGS.cf
        case .greater: flags = 0
        case .less: flags = RFLAGS.cf
        case .equal: flags = RFLAGS.zf
        }
        state.flags.set(arithmetic: flags)
        return true
    }

    // MARK: Conversions

    /// 0F 2A, 2C, 2D, 5A, 5B, E6.
    mutating func executeSSEConversion(_ insn: inout Instruction, _ op: Int, _ prefix: Int) -> Bool {
        // An encoding that does not exist is #UD before any #NM.
        switch (op, prefix) {
        case (0x5B, 0xF2), (0xE6, 0): return undefined()
        default: break
        }
        guard sseReady() else { return false }
        let mxcsr = state.fpu.mxcsr
        var env = FloatEnvironment(mxcsr: mxcsr)
        var exceptions = SIMDExceptions()
        let rexW = insn.rex & 8 != 0
        switch (op, prefix) {
        case (0x2A, 0), (0x2A, 0x66):  // CVTPI2PS, CVTPI2PD xmm, mm/m64
            let fromRegister = insn.mod == 3
            if fromRegister { guard x87ExceptionCheck() else { return false } }
            guard let source = mmxOperand(insn) else { return false }
            let double = prefix == 0x66
            var result = double ? 0 : state.fpu.xmm(insn.reg)
            for index in 0..<2 {
                let integer = Int64(Int32(truncatingIfNeeded: source >> UInt64(32 * index)))
                let value = double ? SoftFloat<Binary64>.fromInteger(integer, &env) : SoftFloat<Binary32>.fromInteger(integer, &env)
                exceptions.record(&env)
                result = replacing(result, index, width: double ? 64 : 32, with: value)
            }
            guard commitSIMDExceptions(exceptions) else { return false }
            if fromRegister { state.fpu.enterMMX() }
            state.fpu.setXMM(insn.reg, result)
        case (0x2A, 0xF3), (0x2A, 0xF2):  // CVTSI2SS, CVTSI2SD xmm, r/m32/64
            let size = rexW ? 8 : 4
            guard let source = readOperand(insn, size: size) else { return false }
            let integer = Int64(bitPattern: signExtend(source, size: size))
            let double = prefix == 0xF2
            let value = double ? SoftFloat<Binary64>.fromInteger(integer, &env) : SoftFloat<Binary32>.fromInteger(integer, &env)
            exceptions.record(&env)
            guard commitSIMDExceptions(exceptions) else { return false }
            state.fpu.setXMM(insn.reg, replacing(state.fpu.xmm(insn.reg), 0, width: double ? 64 : 32, with: value))
        case (0x2C, 0), (0x2D, 0), (0x2C, 0x66), (0x2D, 0x66):  // CVT(T)PS2PI, CVT(T)PD2PI mm, xmm/m
            let double = prefix == 0x66
            guard x87ExceptionCheck() else { return false }
            guard let source = xmmOperand(insn, size: double ? 16 : 8, aligned: double) else { return false }
            var result: UInt64 = 0
            for index in 0..<2 {
                let value = element(source, index, width: double ? 64 : 32)
                let integer = double
                    ? SoftFloat<Binary64>.toInteger(value, bits: 32, truncate: op == 0x2C, &env)
                    : SoftFloat<Binary32>.toInteger(value, bits: 32, truncate: op == 0x2C, &env)
                exceptions.record(&env)
                result |= integer << UInt64(32 * index)
            }
            guard commitSIMDExceptions(exceptions) else { return false }
            state.fpu.enterMMX()
            state.fpu.setMM(insn.reg, result)
        case (0x2C, 0xF3), (0x2D, 0xF3), (0x2C, 0xF2), (0x2D, 0xF2):  // CVT(T)SS2SI, CVT(T)SD2SI r, xmm/m
            let double = prefix == 0xF2
            guard let source = xmmOperand(insn, size: double ? 8 : 4, aligned: false) else { return false }
            let value = element(source, 0, width: double ? 64 : 32)
            let bits = rexW ? 64 : 32
            let integer = double
                ? SoftFloat<Binary64>.toInteger(value, bits: bits, truncate: op == 0x2C, &env)
                : SoftFloat<Binary32>.toInteger(value, bits: bits, truncate: op == 0x2C, &env)
            exceptions.record(&env)
            guard commitSIMDExceptions(exceptions) else { return false }
            state.write(insn.reg, integer, size: bits / 8, legacyHighBytes: false)
        case (0x5A, 0):  // CVTPS2PD xmm, xmm/m64
            guard let source = xmmOperand(insn, size: 8, aligned: false),
                  convertLanes(insn, source, count: 2, from: 32, to: 64, { SoftFloat<Binary32>.convert($0, to: Binary64.self, &$1) })
            else { return false }
        case (0x5A, 0x66):  // CVTPD2PS xmm, xmm/m128: the high half zeroed
            guard let source = xmmOperand(insn, size: 16, aligned: true),
                  convertLanes(insn, source, count: 2, from: 64, to: 32, { SoftFloat<Binary64>.convert($0, to: Binary32.self, &$1) })
            else { return false }
        case (0x5A, 0xF3):  // CVTSS2SD
            guard let source = xmmOperand(insn, size: 4, aligned: false) else { return false }
            let value = SoftFloat<Binary32>.convert(element(source, 0, width: 32), to: Binary64.self, &env)
            exceptions.record(&env)
            guard commitSIMDExceptions(exceptions) else { return false }
            state.fpu.setXMM(insn.reg, replacing(state.fpu.xmm(insn.reg), 0, width: 64, with: value))
        case (0x5A, 0xF2):  // CVTSD2SS
            guard let source = xmmOperand(insn, size: 8, aligned: false) else { return false }
            let value = SoftFloat<Binary64>.convert(element(source, 0, width: 64), to: Binary32.self, &env)
            exceptions.record(&env)
            guard commitSIMDExceptions(exceptions) else { return false }
            state.fpu.setXMM(insn.reg, replacing(state.fpu.xmm(insn.reg), 0, width: 32, with: value))
        case (0x5B, 0):  // CVTDQ2PS
            guard let source = xmmOperand(insn, size: 16, aligned: true),
                  convertLanes(insn, source, count: 4, from: 32, to: 32, {
                      SoftFloat<Binary32>.fromInteger(Int64(Int32(truncatingIfNeeded: $0)), &$1)
                  })
            else { return false }
        case (0x5B, 0x66), (0x5B, 0xF3):  // CVTPS2DQ, CVTTPS2DQ
            let truncate = prefix == 0xF3
            guard let source = xmmOperand(insn, size: 16, aligned: true),
                  convertLanes(insn, source, count: 4, from: 32, to: 32, {
                      SoftFloat<Binary32>.toInteger($0, bits: 32, truncate: truncate, &$1)
                  })
            else { return false }
        case (0xE6, 0x66), (0xE6, 0xF2):  // CVTTPD2DQ, CVTPD2DQ: the high half zeroed
            let truncate = prefix == 0x66
            guard let source = xmmOperand(insn, size: 16, aligned: true),
                  convertLanes(insn, source, count: 2, from: 64, to: 32, {
                      SoftFloat<Binary64>.toInteger($0, bits: 32, truncate: truncate, &$1)
                  })
            else { return false }
        case (0xE6, 0xF3):  // CVTDQ2PD xmm, xmm/m64: exact, so no exception
            guard let source = xmmOperand(insn, size: 8, aligned: false),
                  convertLanes(insn, source, count: 2, from: 32, to: 64, {
                      SoftFloat<Binary64>.fromInteger(Int64(Int32(truncatingIfNeeded: $0)), &$1)
                  })
            else { return false }
        default:
            return undefined()
        }
        return true
    }

    // MARK: Moves, shuffles, logic

    /// 0F 10-17, 28, 29, 2B, 50, 54-57, C6: the PS/PD moves, logic and shuffles and the SS/SD moves.
    mutating func executeSSEMove(_ insn: inout Instruction, _ op: Int, _ prefix: Int) -> Bool {
        let packedOnly = op >= 0x14 && op != 0x16 && op != 0x17  // 14 15 28 29 2B 50 54-57 C6
        if packedOnly && prefix != 0 && prefix != 0x66 { return undefined() }
        if (op == 0x12 || op == 0x16) && prefix != 0 && prefix != 0x66 {
            return executeSSE3Duplicate(&insn, op, prefix)
        }
        if (op == 0x13 || op == 0x17) && prefix != 0 && prefix != 0x66 { return undefined() }
        guard sseReady() else { return false }
        let reg = insn.reg
        switch op {
        case 0x10:
            switch prefix {
            case 0xF3, 0xF2:  // MOVSS, MOVSD: a load zeroes the rest; a register move merges
                let width = prefix == 0xF3 ? 32 : 64
                if insn.isMemory {
                    guard let value = readVector(insn, size: width / 8) else { return false }
                    state.fpu.setXMM(reg, value)
                } else {
                    let value = element(state.fpu.xmm(insn.rm), 0, width: width)
                    state.fpu.setXMM(reg, replacing(state.fpu.xmm(reg), 0, width: width, with: value))
                }
            default:  // MOVUPS, MOVUPD
                guard let value = xmmOperand(insn, size: 16, aligned: false) else { return false }
                state.fpu.setXMM(reg, value)
            }
        case 0x11:
            let value = state.fpu.xmm(reg)
            switch prefix {
            case 0xF3, 0xF2:
                let width = prefix == 0xF3 ? 32 : 64
                if insn.isMemory { return writeVector(insn, value, size: width / 8) }
                let low = element(value, 0, width: width)
                state.fpu.setXMM(insn.rm, replacing(state.fpu.xmm(insn.rm), 0, width: width, with: low))
            default:
                if insn.isMemory { return writeVector(insn, value, size: 16) }
                state.fpu.setXMM(insn.rm, value)
            }
        case 0x12, 0x16:  // MOVLPS/MOVLPD/MOVHLPS, MOVHPS/MOVHPD/MOVLHPS
            let high = op == 0x16
            let value: UInt64
            if insn.isMemory {
                guard let loaded = read(insn.segment, insn.offset, size: 8) else { return false }
                value = loaded
            } else {
                guard prefix == 0 else { return undefined() }
                value = element(state.fpu.xmm(insn.rm), high ? 0 : 1, width: 64)
            }
            state.fpu.setXMM(reg, replacing(state.fpu.xmm(reg), high ? 1 : 0, width: 64, with: value))
        case 0x13, 0x17:  // MOVLPS/MOVLPD, MOVHPS/MOVHPD m64, xmm
            guard insn.isMemory else { return undefined() }
            return write(insn.segment, insn.offset, element(state.fpu.xmm(reg), op == 0x17 ? 1 : 0, width: 64), size: 8)
        case 0x14, 0x15:  // UNPCKLPS/PD, UNPCKHPS/PD
            guard let source = xmmOperand(insn, size: 16, aligned: true) else { return false }
            let destination = state.fpu.xmm(reg)
            let width = prefix == 0x66 ? 64 : 32
            let result = op == 0x14 ? SIMDInteger.unpackLow(destination, source, width: width)
                : SIMDInteger.unpackLow(destination >> 64, source >> 64, width: width)
            state.fpu.setXMM(reg, result)
        case 0x28:  // MOVAPS, MOVAPD
            guard let value = xmmOperand(insn, size: 16, aligned: true) else { return false }
            state.fpu.setXMM(reg, value)
        case 0x29:
            if insn.isMemory { return writeVector(insn, state.fpu.xmm(reg), size: 16, aligned: true) }
            state.fpu.setXMM(insn.rm, state.fpu.xmm(reg))
        case 0x2B:  // MOVNTPS, MOVNTPD
            guard insn.isMemory else { return undefined() }
            return writeVector(insn, state.fpu.xmm(reg), size: 16, aligned: true)
        case 0x50:  // MOVMSKPS, MOVMSKPD
            guard !insn.isMemory else { return undefined() }
            let value = state.fpu.xmm(insn.rm)
            let width = prefix == 0x66 ? 64 : 32
            var mask: UInt64 = 0
            for index in 0..<(128 / width) where element(value, index, width: width) >> UInt64(width - 1) != 0 {
                mask |= 1 << UInt64(index)
            }
            state.write(reg, mask, size: 4, legacyHighBytes: false)
        case 0x54...0x57:  // AND, ANDN, OR, XOR PS/PD
            guard let source = xmmOperand(insn, size: 16, aligned: true) else { return false }
            let destination = state.fpu.xmm(reg)
            let result: UInt128
            switch op {
            case 0x54: result = destination & source
            case 0x55: result = ~destination & source
            case 0x56: result = destination | source
            default: result = destination ^ source
            }
            state.fpu.setXMM(reg, result)
        default:  // C6: SHUFPS, SHUFPD
            guard let source = xmmOperand(insn, size: 16, aligned: true) else { return false }
            let destination = state.fpu.xmm(reg)
            let imm = insn.immediate
            var result: UInt128 = 0
            if prefix == 0x66 {
                result = replacing(result, 0, width: 64, with: element(destination, Int(imm & 1), width: 64))
                result = replacing(result, 1, width: 64, with: element(source, Int((imm >> 1) & 1), width: 64))
            } else {
                for index in 0..<4 {
                    let from = index < 2 ? destination : source
                    result = replacing(result, index, width: 32, with: element(from, Int((imm >> UInt64(2 * index)) & 3), width: 32))
                }
            }
            state.fpu.setXMM(reg, result)
        }
        return true
    }

    // MARK: Integer

    /// MMX (no prefix) and SSE2 (66) integer instructions, and the moves of
    /// 0F 6E 6F 7E 7F D6 E7 C3 F7.
    mutating func executeSIMDInteger(_ insn: inout Instruction, _ op: Int, _ prefix: Int) -> Bool {
        switch op {
        case 0x6E, 0x6F, 0x7E, 0x7F, 0xD6, 0xE7, 0xC3, 0xF7:
            return executeSIMDIntegerMove(&insn, op, prefix)
        case 0x77:  // EMMS
            guard prefix == 0 else { return undefined() }
            guard mmxReady() else { return false }
            state.fpu.tags = 0
            return true
        case 0x70:
            return executeShuffleWords(&insn, prefix)
        case 0x71, 0x72, 0x73:
            return executeShiftImmediate(&insn, op, prefix)
        case 0xC4, 0xC5:
            return executeWordInsertExtract(&insn, op, prefix)
        case 0xD7:  // PMOVMSKB r32, mm/xmm
            guard !insn.isMemory, prefix == 0 || prefix == 0x66 else { return undefined() }
            if prefix == 0x66 {
                guard sseReady() else { return false }
                state.write(insn.reg, SIMDInteger.byteMask(state.fpu.xmm(insn.rm), count: 16), size: 4, legacyHighBytes: false)
            } else {
                guard mmxReady() else { return false }
                let mask = SIMDInteger.byteMask(UInt128(state.fpu.mm(insn.rm)), count: 8)
                state.fpu.enterMMX()
                state.write(insn.reg, mask, size: 4, legacyHighBytes: false)
            }
            return true
        default:
            break
        }
        guard SIMDInteger.isBinary(op), prefix == 0x66 || (prefix == 0 && op != 0x6C && op != 0x6D) else {
            return undefined()
        }
        if prefix == 0x66 {
            guard sseReady() else { return false }
            guard let source = xmmOperand(insn, size: 16, aligned: true) else { return false }
            guard let result = SIMDInteger.binary(op, state.fpu.xmm(insn.reg), source, mmx: false) else { return undefined() }
            state.fpu.setXMM(insn.reg, result)
            return true
        }
        guard mmxReady() else { return false }
        guard let source = mmxOperand(insn) else { return false }
        guard let result = SIMDInteger.binary(op, UInt128(state.fpu.mm(insn.reg)), UInt128(source), mmx: true) else {
            return undefined()
        }
        state.fpu.enterMMX()
        state.fpu.setMM(insn.reg, UInt64(truncatingIfNeeded: result))
        return true
    }

    /// MOVD/MOVQ (6E 7E D6), MOVQ/MOVDQA/MOVDQU (6F 7F), MOVNTQ/MOVNTDQ
    /// (E7), MOVNTI (C3), MASKMOVQ/MASKMOVDQU (F7), MOVQ2DQ/MOVDQ2Q (D6).
    mutating func executeSIMDIntegerMove(_ insn: inout Instruction, _ op: Int, _ prefix: Int) -> Bool {
        let rexW = insn.rex & 8 != 0
        let gprSize = rexW ? 8 : 4
        switch (op, prefix) {
        case (0x6E, 0):  // MOVD/MOVQ mm, r/m
            guard mmxReady() else { return false }
            guard let value = readOperand(insn, size: gprSize) else { return false }
            state.fpu.enterMMX()
            state.fpu.setMM(insn.reg, value)
        case (0x6E, 0x66):  // MOVD/MOVQ xmm, r/m
            guard sseReady() else { return false }
            guard let value = readOperand(insn, size: gprSize) else { return false }
            state.fpu.setXMM(insn.reg, UInt128(value))
        case (0x7E, 0):  // MOVD/MOVQ r/m, mm
            guard mmxReady() else { return false }
            let value = state.fpu.mm(insn.reg)
            guard writeOperand(insn, value, size: gprSize) else { return false }
            state.fpu.enterMMX()
        case (0x7E, 0x66):  // MOVD/MOVQ r/m, xmm
            guard sseReady() else { return false }
            return writeOperand(insn, UInt64(truncatingIfNeeded: state.fpu.xmm(insn.reg)), size: gprSize)
        case (0x7E, 0xF3):  // MOVQ xmm, xmm/m64: the high half zeroed
            guard sseReady() else { return false }
            guard let value = xmmOperand(insn, size: 8, aligned: false) else { return false }
            state.fpu.setXMM(insn.reg, value & UInt128(UInt64.max))
        case (0xD6, 0x66):  // MOVQ xmm/m64, xmm
            guard sseReady() else { return false }
            let value = state.fpu.xmm(insn.reg) & UInt128(UInt64.max)
            if insn.isMemory { return writeVector(insn, value, size: 8) }
            state.fpu.setXMM(insn.rm, value)
        case (0xD6, 0xF3):  // MOVQ2DQ xmm, mm
            guard !insn.isMemory else { return undefined() }
            guard sseReady(), x87ExceptionCheck() else { return false }
            state.fpu.setXMM(insn.reg, UInt128(state.fpu.mm(insn.rm)))
            state.fpu.enterMMX()
        case (0xD6, 0xF2):  // MOVDQ2Q mm, xmm
            guard !insn.isMemory else { return undefined() }
            guard sseReady(), x87ExceptionCheck() else { return false }
            state.fpu.enterMMX()
            state.fpu.setMM(insn.reg, UInt64(truncatingIfNeeded: state.fpu.xmm(insn.rm)))
        case (0x6F, 0):  // MOVQ mm, mm/m64
            guard mmxReady() else { return false }
            guard let value = mmxOperand(insn) else { return false }
            state.fpu.enterMMX()
            state.fpu.setMM(insn.reg, value)
        case (0x6F, 0x66), (0x6F, 0xF3):  // MOVDQA, MOVDQU
            guard sseReady() else { return false }
            guard let value = xmmOperand(insn, size: 16, aligned: prefix == 0x66) else { return false }
            state.fpu.setXMM(insn.reg, value)
        case (0x7F, 0):  // MOVQ mm/m64, mm
            guard mmxReady() else { return false }
            let value = state.fpu.mm(insn.reg)
            if insn.isMemory {
                guard write(insn.segment, insn.offset, value, size: 8) else { return false }
            } else {
                state.fpu.setMM(insn.rm, value)
            }
            state.fpu.enterMMX()
        case (0x7F, 0x66), (0x7F, 0xF3):
            guard sseReady() else { return false }
            if insn.isMemory { return writeVector(insn, state.fpu.xmm(insn.reg), size: 16, aligned: prefix == 0x66) }
            state.fpu.setXMM(insn.rm, state.fpu.xmm(insn.reg))
        case (0xE7, 0):  // MOVNTQ m64, mm
            guard insn.isMemory else { return undefined() }
            guard mmxReady() else { return false }
            guard write(insn.segment, insn.offset, state.fpu.mm(insn.reg), size: 8) else { return false }
            state.fpu.enterMMX()
        case (0xE7, 0x66):  // MOVNTDQ m128, xmm
            guard insn.isMemory else { return undefined() }
            guard sseReady() else { return false }
            return writeVector(insn, state.fpu.xmm(insn.reg), size: 16, aligned: true)
        case (0xC3, 0):  // MOVNTI m32/64, r (SSE2; needs no SSE state)
            guard insn.isMemory else { return undefined() }
            return write(insn.segment, insn.offset, state.read(insn.reg, size: gprSize, legacyHighBytes: false), size: gprSize)
        case (0xF7, 0), (0xF7, 0x66):  // MASKMOVQ mm, mm; MASKMOVDQU xmm, xmm: bytes to [DS:rDI]
            guard !insn.isMemory else { return undefined() }
            let mmx = prefix == 0
            if mmx { guard mmxReady() else { return false } } else { guard sseReady() else { return false } }
            let data = mmx ? UInt128(state.fpu.mm(insn.reg)) : state.fpu.xmm(insn.reg)
            let mask = mmx ? UInt128(state.fpu.mm(insn.rm)) : state.fpu.xmm(insn.rm)
            let segment = insn.segmentOverride >= 0 ? insn.segmentOverride : SegmentRegisterName.ds.rawValue
            let base = state.reg(7)
            if mmx { state.fpu.enterMMX() }
            for index in 0..<(mmx ? 8 : 16) where element(mask, index, width: 8) & 0x80 != 0 {
                let offset = (base &+ UInt64(index)) & sizeMask(insn.addressSize)
                guard write(segment, offset, element(data, index, width: 8), size: 1) else { return false }
            }
        default:
            return undefined()
        }
        return true
    }

    /// 0F 70: PSHUFW (none), PSHUFD (66), PSHUFHW (F3), PSHUFLW (F2).
    mutating func executeShuffleWords(_ insn: inout Instruction, _ prefix: Int) -> Bool {
        let imm = insn.immediate
        if prefix == 0 {
            guard mmxReady() else { return false }
            guard let source = mmxOperand(insn) else { return false }
            state.fpu.enterMMX()
            state.fpu.setMM(insn.reg, UInt64(truncatingIfNeeded: SIMDInteger.shuffle(UInt128(source), imm, width: 16)))
            return true
        }
        guard sseReady() else { return false }
        guard let source = xmmOperand(insn, size: 16, aligned: true) else { return false }
        let result: UInt128
        switch prefix {
        case 0x66: result = SIMDInteger.shuffle(source, imm, width: 32)
        case 0xF3:  // the high four words
            result = (source & UInt128(UInt64.max)) | SIMDInteger.shuffle(source >> 64, imm, width: 16) << 64
        default:  // F2: the low four words
            result = (source >> 64) << 64 | (SIMDInteger.shuffle(source, imm, width: 16) & UInt128(UInt64.max))
        }
        state.fpu.setXMM(insn.reg, result)
        return true
    }

    /// 0F 71/72/73 groups: /2 PSRL, /4 PSRA, /6 PSLL by an immediate, and
    /// 66 0F 73 /3 PSRLDQ, /7 PSLLDQ by bytes.
    mutating func executeShiftImmediate(_ insn: inout Instruction, _ op: Int, _ prefix: Int) -> Bool {
        guard !insn.isMemory, prefix == 0 || prefix == 0x66 else { return undefined() }
        let kind = insn.reg & 7
        let count = insn.immediate & 0xFF
        let registerOp: Int
        switch (op, kind) {
        case (0x71, 2): registerOp = 0xD1
        case (0x71, 4): registerOp = 0xE1
        case (0x71, 6): registerOp = 0xF1
        case (0x72, 2): registerOp = 0xD2
        case (0x72, 4): registerOp = 0xE2
        case (0x72, 6): registerOp = 0xF2
        case (0x73, 2): registerOp = 0xD3
        case (0x73, 6): registerOp = 0xF3
        case (0x73, 3), (0x73, 7):
            guard prefix == 0x66 else { return undefined() }
            guard sseReady() else { return false }
            let value = state.fpu.xmm(insn.rm)
            let bitCount = Int(min(count, 16)) * 8
            let result: UInt128 = bitCount >= 128 ? 0 : (kind == 3 ? value >> bitCount : value << bitCount)
            state.fpu.setXMM(insn.rm, result)
            return true
        default:
            return undefined()
        }
        if prefix == 0x66 {
            guard sseReady() else { return false }
            state.fpu.setXMM(insn.rm, SIMDInteger.shift(registerOp, state.fpu.xmm(insn.rm), count: count))
        } else {
            guard mmxReady() else { return false }
            let result = SIMDInteger.shift(registerOp, UInt128(state.fpu.mm(insn.rm)), count: count)
            state.fpu.enterMMX()
            state.fpu.setMM(insn.rm, UInt64(truncatingIfNeeded: result))
        }
        return true
    }

    /// 0F C4 PINSRW mm/xmm, r32/m16, imm8 and 0F C5 PEXTRW r32, mm/xmm, imm8.
    mutating func executeWordInsertExtract(_ insn: inout Instruction, _ op: Int, _ prefix: Int) -> Bool {
        guard prefix == 0 || prefix == 0x66 else { return undefined() }
        let mmx = prefix == 0
        if mmx { guard mmxReady() else { return false } } else { guard sseReady() else { return false } }
        let index = Int(insn.immediate & (mmx ? 3 : 7))
        if op == 0xC5 {
            guard !insn.isMemory else { return undefined() }
            let source = mmx ? UInt128(state.fpu.mm(insn.rm)) : state.fpu.xmm(insn.rm)
            if mmx { state.fpu.enterMMX() }
            state.write(insn.reg, element(source, index, width: 16), size: 4, legacyHighBytes: false)
            return true
        }
        guard let word = readOperand(insn, size: 2) else { return false }
        if mmx {
            state.fpu.enterMMX()
            state.fpu.setMM(insn.reg, UInt64(truncatingIfNeeded: replacing(UInt128(state.fpu.mm(insn.reg)), index, width: 16, with: word)))
        } else {
            state.fpu.setXMM(insn.reg, replacing(state.fpu.xmm(insn.reg), index, width: 16, with: word))
        }
        return true
    }
}
