// Lazy arithmetic flags: an ALU instruction records its operation, operands
// and result; OF SF ZF AF PF CF are computed only when something reads them.

enum FlagOp {
    /// The arithmetic flags are in `bits`.
    case none
    /// `result = dst + src + carryIn`.
    case add
    /// `result = dst - src - carryIn` (SUB, SBB, CMP, NEG with dst = 0).
    case sub
    /// AND, OR, XOR, TEST: CF = OF = 0, AF = 0.
    case logic
    /// INC/DEC: as add/sub of 1 but CF is kept (in `carryIn`).
    case inc
    case dec
    /// Shifts and multiplies: SF ZF PF follow `result`, CF is `carryIn`, OF
    /// is bit 0 of `src`, AF is 0 (the SDM leaves AF, and SF ZF PF of a
    /// multiply, undefined: these are the values this CPU has always given).
    case result
}

struct LazyFlags {
    /// RFLAGS; its arithmetic bits are valid only when `op == .none`.
    var bits: UInt64
    var op: FlagOp
    var size: UInt8
    /// Carry into ADC/SBB, or the CF that INC/DEC keep.
    var carryIn: Bool
    var dst: UInt64
    var src: UInt64
    var result: UInt64

    init(rflags: UInt64) {
        bits = rflags
        op = .none
        size = 1
        carryIn = false
        dst = 0
        src = 0
        result = 0
    }

    @inline(always)
    mutating func record(_ op: FlagOp, size: Int, dst: UInt64, src: UInt64, result: UInt64, carryIn: Bool = false) {
        self.op = op
        self.size = UInt8(truncatingIfNeeded: size)
        self.dst = dst
        self.src = src
        self.result = result
        self.carryIn = carryIn
    }

    /// Records a shift's or multiply's flags (`FlagOp.result`).
    @inline(always)
    mutating func record(result: UInt64, size: Int, carry: Bool, overflow: Bool) {
        record(.result, size: size, dst: 0, src: overflow ? 1 : 0, result: result, carryIn: carry)
    }

    /// Sets the arithmetic flags to explicit values (rotates, POPF).
    @inline(__always)
    mutating func set(arithmetic: UInt64) {
        bits = (materialized & ~RFLAGS.arithmetic) | (arithmetic & RFLAGS.arithmetic)
        op = .none
    }

    /// RFLAGS with the arithmetic flags computed.
    var materialized: UInt64 {
        if op == .none { return bits }
        return (bits & ~RFLAGS.arithmetic) | arithmetic
    }

    @inline(always)
    var carry: Bool {
        let size = Int(self.size)
        let mask = sizeMask(size)
        switch op {
        case .none: return bits & RFLAGS.cf != 0
        case .add:
            let d = dst & mask, r = result & mask
            return r < d || (carryIn && r == d)
        case .sub:
            let d = dst & mask, s = src & mask
            return d < s || (carryIn && d == s)
        case .logic: return false
        case .inc, .dec, .result: return carryIn
        }
    }

    /// OF SF ZF AF PF CF of the recorded operation.
    var arithmetic: UInt64 {
        let size = Int(self.size)
        let mask = sizeMask(size)
        let sign = signBit(size)
        let r = result & mask
        var f: UInt64 = 0
        if carry { f |= RFLAGS.cf }
        if r == 0 { f |= RFLAGS.zf }
        if r & sign != 0 { f |= RFLAGS.sf }
        if parityEven(r) { f |= RFLAGS.pf }
        switch op {
        case .none: return bits & RFLAGS.arithmetic
        case .add, .inc:
            if (dst ^ result) & (src ^ result) & sign != 0 { f |= RFLAGS.of }
            if (dst ^ src ^ result) & 0x10 != 0 { f |= RFLAGS.af }
        case .sub, .dec:
            if (dst ^ src) & (dst ^ result) & sign != 0 { f |= RFLAGS.of }
            if (dst ^ src ^ result) & 0x10 != 0 { f |= RFLAGS.af }
        case .logic:
            break
        case .result:
            if src & 1 != 0 { f |= RFLAGS.of }
        }
        return f
    }

    // Single flags of the recorded operation, as `arithmetic` computes them,
    // for conditions that need one or two.
    @inline(always)
    var zero: Bool { op == .none ? bits & RFLAGS.zf != 0 : result & sizeMask(Int(size)) == 0 }

    @inline(always)
    var sign: Bool { op == .none ? bits & RFLAGS.sf != 0 : result & signBit(Int(size)) != 0 }

    @inline(always)
    var overflow: Bool {
        let sign = signBit(Int(size))
        switch op {
        case .none: return bits & RFLAGS.of != 0
        case .add, .inc: return (dst ^ result) & (src ^ result) & sign != 0
        case .sub, .dec: return (dst ^ src) & (dst ^ result) & sign != 0
        case .logic: return false
        case .result: return src & 1 != 0
        }
    }

    /// Evaluates condition code `cc` (the low nibble of Jcc/SETcc/CMOVcc),
    /// computing only the flags it reads.
    @inline(always)
    func condition(_ cc: Int) -> Bool {
        let value: Bool
        switch cc >> 1 {
        case 0: value = overflow
        case 1: value = carry
        case 2: value = zero
        case 3: value = carry || zero
        case 4: value = sign
        case 5: value = op == .none ? bits & RFLAGS.pf != 0 : parityEven(result)
        case 6: value = sign != overflow
        default: value = zero || (sign != overflow)
        }
        return cc & 1 == 0 ? value : !value
    }
}

/// PF: set when the low byte has an even number of ones.
@inline(__always)
func parityEven(_ value: UInt64) -> Bool {
    (value & 0xFF).nonzeroBitCount & 1 == 0
}

/// SF ZF PF of a result, for instructions that compute their flags eagerly.
@inline(__always)
func resultFlags(_ result: UInt64, size: Int) -> UInt64 {
    let r = result & sizeMask(size)
    var f: UInt64 = 0
    if r == 0 { f |= RFLAGS.zf }
    if r & signBit(size) != 0 { f |= RFLAGS.sf }
    if parityEven(r) { f |= RFLAGS.pf }
    return f
}

extension X86CPU {
    /// CLC STC CMC CLD STD CLI STI, PUSHF/POPF, SAHF/LAHF.
    mutating func executeFlagInstruction(_ insn: inout Instruction) -> Bool {
        switch insn.opcode {
        case 0xF5: state.flags.set(arithmetic: state.flags.materialized ^ RFLAGS.cf)
        case 0xF8: state.flags.set(arithmetic: state.flags.materialized & ~RFLAGS.cf)
        case 0xF9: state.flags.set(arithmetic: state.flags.materialized | RFLAGS.cf)
        case 0xFC: state.flags.bits &= ~RFLAGS.df
        case 0xFD: state.flags.bits |= RFLAGS.df
        case 0xFA, 0xFB:  // IOPL, VME and PVI rules in Virtual8086.swift
            return executeInterruptFlag(set: insn.opcode == 0xFB)
        case 0x9E:  // SAHF: SF ZF AF PF CF from AH
            let ah = (state.reg(0) >> 8) & 0xFF
            let keep = state.flags.materialized & RFLAGS.of
            state.flags.set(arithmetic: keep | (ah & (RFLAGS.sf | RFLAGS.zf | RFLAGS.af | RFLAGS.pf | RFLAGS.cf)))
        case 0x9F:  // LAHF
            let low = (state.flags.materialized & 0xD5) | 0x2
            state.setReg(0, (state.reg(0) & ~0xFF00) | (low << 8))
        case 0x9C...0x9D where state.flags.bits & RFLAGS.vm != 0:
            return executeFlagsInVirtual8086(insn)
        case 0x9C:  // PUSHF: VM and RF read as 0 in the image
            let size = stackOperandSize(insn)
            let image = state.flags.materialized & ~(RFLAGS.vm | RFLAGS.rf)
            return push(image, size: size)
        case 0x9D:  // POPF
            let size = stackOperandSize(insn)
            guard let value = pop(size: size) else { return false }
            var writable = RFLAGS.writable & ~(RFLAGS.vm | RFLAGS.rf | RFLAGS.vif | RFLAGS.vip)
            if state.cr0 & ControlBits.cr0PE != 0 {
                if state.privilegeLevel() > 0 { writable &= ~RFLAGS.iopl }
                if UInt64(state.privilegeLevel()) > (state.flags.materialized & RFLAGS.iopl) >> 12 { writable &= ~RFLAGS.if }
            }
            writable &= sizeMask(size)
            let old = state.flags.materialized
            state.flags = LazyFlags(rflags: (old & ~writable) | (value & writable) | 0x2)
        default:
            return undefined()
        }
        return true
    }
}
