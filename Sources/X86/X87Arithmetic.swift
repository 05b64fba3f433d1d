// The x87 data instructions of D8-DF: loads and stores of every format
// (real, integer, packed BCD), the constants, FXCH, FCMOVcc, the basic
// arithmetic, the comparisons, the transcendentals, FFREE, FINCSTP,
// FDECSTP, FNOP (Intel SDM Vol. 1 chapter 8, Vol. 2).
//
// They run on the host's x87 FPU (Sources/CX87/x87.c): the guest's x87
// state is loaded into it with FRSTOR, the same instruction runs, and
// FNSAVE gives the state back. Why not a software floating-point unit (or
// Swift's Float80 with the rounding mode set around it): the host FPU is
// exactly what KVM gives a guest on this host, in every detail a software
// model would have to rebuild and could get wrong: precision control
// (24/53/64-bit rounding with the 15-bit exponent range kept), every
// rounding mode, C1's round-up and stack-fault meanings, the masked and
// unmasked responses (an unmasked overflow or underflow leaves a
// register result with its exponent rebiased by 24576; an unmasked
// invalid operation leaves the destination alone), denormal operands,
// unsupported encodings (pseudo-NaNs, pseudo-infinities, unnormals),
// NaN propagation, and the transcendental instructions, whose last bits
// differ between CPU vendors and no document pins down. Float80 covers
// only 64-bit precision with round-to-nearest, and LLVM may fold or move
// Float80 operations across a rounding-mode change (it assumes the
// default environment). The cost is that these instructions need an x86
// host: elsewhere they end in an emulation failure.
//
// This file keeps what is the guest's rather than the host's: #UD for
// the reserved encodings, #MF for a pending exception, the memory operand
// (read before anything changes; a store written only when the host
// stored it, before the new state is committed, so that a fault leaves
// the FPU as it was), EFLAGS for FCMOVcc and FCOMI, and FIP/FCS, FOP and
// FDP/FDS.

import CX87

/// The D8-DF register forms the CPU does not define: they raise #UD (the
/// host CPU's map; the aliases FSTP1, FCOM2, FCOMP3, FXCH4, FCOMP5,
/// FFREEP, FXCH7, FSTP8 and FSTP9 are defined and run).
private let x87UndefinedRegisterForms: InlineArray<8, UInt64> = [
    0x0000_0000_0000_0000,  // D8
    0x0000_80CC_00FE_0000,  // D9: D1-D7, E2, E3, E6, E7, EF
    0xFFFF_FDFF_0000_0000,  // DA: E0-FF but E9 (FUCOMPP)
    0xFF00_00E0_0000_0000,  // DB: E5-E7, F8-FF
    0x0000_0000_0000_0000,  // DC
    0xFFFF_0000_0000_0000,  // DD: F0-FF
    0x0000_0000_FD00_0000,  // DE: D8, DA-DF
    0xFF00_00FE_0000_0000,  // DF: E1-E7, F8-FF
]

/// The memory forms' operands, by escape and ModRM.reg: the size in bytes
/// in the low nibble, 0x10 for a store, 0 for a form that is undefined or
/// that X87.swift's control instructions own.
private let x87MemoryForms: InlineArray<64, UInt8> = [
    4, 4, 4, 4, 4, 4, 4, 4,  // D8: arithmetic m32fp
    4, 0, 0x14, 0x14, 0, 0, 0, 0,  // D9: FLD, -, FST, FSTP m32fp; FLDENV FLDCW FNSTENV FNSTCW
    4, 4, 4, 4, 4, 4, 4, 4,  // DA: arithmetic m32int
    4, 0x14, 0x14, 0x14, 0, 10, 0, 0x1A,  // DB: FILD, FISTTP, FIST, FISTP m32int; -, FLD m80fp, -, FSTP m80fp
    8, 8, 8, 8, 8, 8, 8, 8,  // DC: arithmetic m64fp
    8, 0x18, 0x18, 0x18, 0, 0, 0, 0,  // DD: FLD, FISTTP, FST, FSTP m64; FRSTOR, -, FNSAVE, FNSTSW
    2, 2, 2, 2, 2, 2, 2, 2,  // DE: arithmetic m16int
    2, 0x12, 0x12, 0x12, 10, 8, 0x1A, 0x18,  // DF: FILD, FISTTP, FIST, FISTP m16; FBLD, FILD m64, FBSTP, FISTP m64
]

extension X86CPU {
    /// Every D8-DF form that X87.swift's control instructions leave.
    mutating func executeX87Arithmetic(_ insn: inout Instruction) -> Bool {
        let escape = (insn.opcode - 0xD8) & 7
        let reg = insn.reg & 7
        let modrm = insn.mod << 6 | reg << 3 | (insn.rm & 7)
        let form: Int
        var operandKind: UInt8 = 0
        if insn.isMemory {
            operandKind = x87MemoryForms[escape &* 8 &+ reg]
            if operandKind == 0 { return undefined() }
            form = Int(CX87_REGISTER_FORMS) &+ escape &* 8 &+ reg
        } else {
            if x87UndefinedRegisterForms[escape] >> UInt64(modrm & 63) & 1 != 0 { return undefined() }
            form = escape &* 64 &+ (modrm & 63)
        }
        guard x87ExceptionCheck() else { return false }
        guard cx87_available() else { return exit(.emulationFailure(address: linear(SegmentRegisterName.cs.rawValue, state.rip))) }

        let size = Int(operandKind & 0xF)
        let isStore = operandKind & 0x10 != 0
        // A control word that unmasks an exception may keep a store from
        // being written: the instruction then runs twice, over two fillers.
        let mayNotStore = isStore && state.fpu.fcw & 0x3F != 0x3F
        return withUnsafeTemporaryAllocation(byteCount: 256, alignment: 16) { buffer -> Bool in
            guard let image = buffer.baseAddress else { return false }
            let operand = image + 224
            let retry = image + 112
            operand.storeBytes(of: 0, as: UInt128.self)
            if size != 0 && !isStore {
                guard readX87Operand(insn, into: operand, size: size) else { return false }
            }
            storeX87Image(to: image)
            if mayNotStore { retry.copyMemory(from: image, byteCount: 108) }

            // FCMOVcc (DA, DB C0-DF) reads EFLAGS; FCOMI and FUCOMI (DB, DF
            // E8-F7) may leave them (Intel's, with an unmasked invalid operation).
            let flagsIn = !insn.isMemory && (escape == 2 || escape == 3 || escape == 7) ? state.flags.materialized : 0
            var flags = flagsIn
            cx87_execute(image, UInt32(form), operand, &flags)

            if isStore {
                var written = true
                if mayNotStore {
                    let stored: UInt128 = (1 << UInt128(size * 8)) - 1
                    let first = operand.load(as: UInt128.self)
                    operand.storeBytes(of: ~0, as: UInt128.self)
                    var ignored = flagsIn
                    cx87_execute(retry, UInt32(form), operand, &ignored)
                    written = operand.load(as: UInt128.self) & stored == first & stored
                    operand.storeBytes(of: first, as: UInt128.self)
                }
                if written { guard writeX87Operand(insn, from: operand, size: size) else { return false } }
            }

            loadX87Image(from: image)
            // FUCOMI, FCOMI and their popping forms: ZF PF CF, and OF SF AF cleared.
            if !insn.isMemory && (escape == 3 || escape == 7) && modrm >= 0xE8 && modrm < 0xF8 {
                state.flags.set(arithmetic: flags)
            }
            notePointers(insn, opcode: escape << 8 | modrm)
            state.rip = insn.nextRIP
            return true
        }
    }

    /// The x87 state in the FNSAVE 32-bit protected-mode image the host
    /// loads: FCW, FSW, the tag word, ST0-ST7 (the pointers are not the
    /// instruction's business and stay zero). The tag word only says which
    /// registers are empty: FRSTOR works out the other tags from the values.
    mutating func storeX87Image(to image: UnsafeMutableRawPointer) {
        image.initializeMemory(as: UInt8.self, repeating: 0, count: 28)
        image.storeBytes(of: state.fpu.fcw, as: UInt16.self)
        image.storeBytes(of: state.fpu.fsw, toByteOffset: 4, as: UInt16.self)
        var tagWord: UInt16 = 0
        let tags = state.fpu.tags
        for index in 0..<8 where tags & (1 << UInt8(index)) == 0 { tagWord |= 3 << UInt16(2 * index) }
        image.storeBytes(of: tagWord, toByteOffset: 8, as: UInt16.self)
        for index in 0..<8 { X87Value(slot: state.fpu.st(index)).store(to: image + 28 + 10 * index) }
    }

    /// Takes back FSW (TOP with it), the tags and the registers. A register
    /// whose value did not change keeps its slot's bits 80-127.
    mutating func loadX87Image(from image: UnsafeRawPointer) {
        state.fpu.fsw = image.loadUnaligned(fromByteOffset: 4, as: UInt16.self)
        state.fpu.tags = FloatingPointState.abridged(image.loadUnaligned(fromByteOffset: 8, as: UInt16.self))
        for index in 0..<8 {
            let value = X87Value(bytes: image + 28 + 10 * index)
            if X87Value(slot: state.fpu.st(index)) != value { state.fpu.setST(index, value) }
        }
    }

    /// FIP/FCS and FOP for every non-control instruction, FDP/FDS for one
    /// with a memory operand (an instruction without one leaves them, as
    /// the host CPU does). Offsets in protected and long mode; in real
    /// mode the 20-bit linear addresses the real-mode environment layouts
    /// hold (SDM Vol. 1 8.1.8, figures 8-10 and 8-11).
    mutating func notePointers(_ insn: Instruction, opcode: Int) {
        let real = state.mode == .real
        let cs = SegmentRegisterName.cs.rawValue
        state.fpu.fop = UInt16(truncatingIfNeeded: opcode) & 0x7FF
        state.fpu.fcs = state[segmentIndex: cs].selector
        state.fpu.fip = real ? linear(cs, state.rip) : state.rip
        if insn.isMemory {
            state.fpu.fds = state[segmentIndex: insn.segment].selector
            state.fpu.fdp = real ? linear(insn.segment, insn.offset) : insn.offset
        }
    }

    /// The memory operand of a load, checked as a data read.
    mutating func readX87Operand(_ insn: Instruction, into operand: UnsafeMutableRawPointer, size: Int) -> Bool {
        if size <= 8 {
            guard let value = read(insn.segment, insn.offset, size: size) else { return false }
            operand.storeBytes(of: value, as: UInt64.self)
            return true
        }
        guard let address = checkedLinear(insn.segment, insn.offset, size: size, write: false) else { return false }
        if debugUnit.dataBreakpoints != 0 { noteDataAccess(address, size: size, write: false) }
        return copyLinear(address, UnsafeMutableRawBufferPointer(start: operand, count: size), write: false)
    }

    /// The memory operand of a store, checked as a data write.
    mutating func writeX87Operand(_ insn: Instruction, from operand: UnsafeMutableRawPointer, size: Int) -> Bool {
        if size <= 8 {
            let value = operand.load(as: UInt64.self) & (size == 8 ? ~0 : (1 << UInt64(size * 8)) - 1)
            return write(insn.segment, insn.offset, value, size: size)
        }
        guard let address = checkedLinear(insn.segment, insn.offset, size: size, write: true) else { return false }
        if debugUnit.dataBreakpoints != 0 { noteDataAccess(address, size: size, write: true) }
        return copyLinear(address, UnsafeMutableRawBufferPointer(start: operand, count: size), write: true)
    }
}
