// The x87 FPU, MMX and SSE state of one CPU (Intel SDM Vol. 1 chapters 8,
// 9 and 10), as a value stored inline in CPUState: no references, so that
// a copy of the CPU state is still a snapshot.
//
// The x87 data registers are kept by physical number (R0-R7), each in the
// 16-byte slot FXSAVE gives it: the 80-bit value in bits 0-79, bits 80-127
// kept as they were loaded (KVM_SET_FPU and KVM_GET_FPU move them
// verbatim). ST(i) is R((TOP + i) mod 8); MMi is Ri, whatever TOP is.

public struct FloatingPointState {
    /// FCW. Bit 6 reads as 1 and bits 7, 13-15 as 0 (FLDCW forces them).
    public var fcw: UInt16
    /// FSW: exception flags (0-5), SF (6), ES (7), C0-C2 (8-10), TOP
    /// (11-13), C3 (14), B (15).
    public var fsw: UInt16
    /// The abridged tag word FXSAVE stores: bit i set when Ri is not empty.
    /// The full tag word of FNSTENV is computed from the registers' values.
    public var tags: UInt8
    /// FOP: the low 11 bits of the last non-control x87 instruction's
    /// opcode (KVM_SET_FPU can store all 16, which KVM_GET_FPU gives back).
    public var fop: UInt16
    /// FIP and FCS: where the last non-control x87 instruction was.
    public var fip: UInt64
    public var fcs: UInt16
    /// FDP and FDS: that instruction's memory operand.
    public var fdp: UInt64
    public var fds: UInt16
    public var mxcsr: UInt32
    var registers: InlineArray<8, UInt128>
    var xmmRegisters: InlineArray<16, UInt128>

    /// The MXCSR bits this CPU has (FXSAVE's MXCSR_MASK): DAZ included.
    public static let mxcsrMask: UInt32 = 0xFFFF
    public static let defaultMXCSR: UInt32 = 0x1F80

    /// The state after FNINIT, with MXCSR at its default: what KVM gives a
    /// new vCPU (the kernel's fpstate_init_fx).
    public static var initialized: FloatingPointState {
        FloatingPointState(fcw: 0x37F, tags: 0)
    }

    /// The state at power-on (SDM Vol. 3 table 10-1): FCW 0040H and every
    /// register tagged as holding zero (tag word 5555H).
    public static var powerOn: FloatingPointState {
        FloatingPointState(fcw: 0x40, tags: 0xFF)
    }

    init(fcw: UInt16, tags: UInt8) {
        self.fcw = fcw
        fsw = 0
        self.tags = tags
        fop = 0
        fip = 0
        fcs = 0
        fdp = 0
        fds = 0
        mxcsr = Self.defaultMXCSR
        registers = InlineArray(repeating: 0)
        xmmRegisters = InlineArray(repeating: 0)
    }

    // MARK: XMM

    /// XMM register `index` (0-15), read in place (see CPUState.reg).
    @inline(__always)
    public mutating func xmm(_ index: Int) -> UInt128 {
        withUnsafeMutablePointer(to: &xmmRegisters) {
            UnsafeMutableRawPointer($0).load(fromByteOffset: (index & 15) &* 16, as: UInt128.self)
        }
    }

    @inline(__always)
    public mutating func setXMM(_ index: Int, _ value: UInt128) {
        withUnsafeMutablePointer(to: &xmmRegisters) {
            UnsafeMutableRawPointer($0).storeBytes(of: value, toByteOffset: (index & 15) &* 16, as: UInt128.self)
        }
    }

    // MARK: x87 registers

    /// TOP, the physical number of ST(0).
    public var top: Int {
        get { Int((fsw >> 11) & 7) }
        set { fsw = (fsw & ~0x3800) | UInt16((newValue & 7) << 11) }
    }

    /// Physical register Ri's 16-byte slot.
    @inline(__always)
    public mutating func physical(_ index: Int) -> UInt128 {
        withUnsafeMutablePointer(to: &registers) {
            UnsafeMutableRawPointer($0).load(fromByteOffset: (index & 7) &* 16, as: UInt128.self)
        }
    }

    @inline(__always)
    public mutating func setPhysical(_ index: Int, _ value: UInt128) {
        withUnsafeMutablePointer(to: &registers) {
            UnsafeMutableRawPointer($0).storeBytes(of: value, toByteOffset: (index & 7) &* 16, as: UInt128.self)
        }
    }

    /// ST(i)'s 16-byte slot.
    @inline(__always)
    public mutating func st(_ index: Int) -> UInt128 { physical(top &+ index) }

    /// Writes ST(i)'s 80-bit value (the slot's upper bits become 0); the tag is the caller's.
    @inline(__always)
    public mutating func setST(_ index: Int, _ value: X87Value) { setPhysical(top &+ index, value.slot) }

    /// Whether ST(i) is empty.
    public func isEmpty(st index: Int) -> Bool { tags & (1 << UInt8((top + index) & 7)) == 0 }

    /// Marks ST(i) empty or not.
    public mutating func setEmpty(st index: Int, _ empty: Bool) {
        let bit: UInt8 = 1 << UInt8((top + index) & 7)
        tags = empty ? tags & ~bit : tags | bit
    }

    /// A push: TOP moves down and the new ST(0) is tagged valid. Stack
    /// overflow (the register was not empty) is the caller's to check first.
    public mutating func push(_ value: X87Value) {
        top = (top + 7) & 7
        setST(0, value)
        setEmpty(st: 0, false)
    }

    /// A pop: ST(0) is tagged empty and TOP moves up.
    public mutating func pop() {
        setEmpty(st: 0, true)
        top = (top + 1) & 7
    }

    /// The full x87 tag word (two bits per physical register: 00 valid,
    /// 01 zero, 10 special, 11 empty), as FNSTENV and FNSAVE store it.
    public mutating func fullTagWord() -> UInt16 {
        var word: UInt16 = 0
        for index in 0..<8 {
            let tag: UInt16
            if tags & (1 << UInt8(index)) == 0 {
                tag = 3
            } else {
                tag = X87Value(slot: physical(index)).tag
            }
            word |= tag << UInt16(index * 2)
        }
        return word
    }

    /// The abridged tag of a full tag word: only "empty" (11) survives.
    public static func abridged(_ fullTagWord: UInt16) -> UInt8 {
        var tags: UInt8 = 0
        for index in 0..<8 where (fullTagWord >> UInt16(index * 2)) & 3 != 3 {
            tags |= 1 << UInt8(index)
        }
        return tags
    }

    // MARK: Control

    /// FNINIT: the x87 control and status return to their initial values;
    /// every register is empty (the values stay); MXCSR and XMM are untouched.
    public mutating func initializeX87() {
        fcw = 0x37F
        fsw = 0
        tags = 0
        fop = 0
        fip = 0
        fcs = 0
        fdp = 0
        fds = 0
    }

    /// FLDCW's value: bit 6 reads as 1, bits 7 and 13-15 as 0 (as the host CPU stores them).
    static func controlWord(_ value: UInt16) -> UInt16 { (value & 0x1F3F) | 0x40 }

    /// ES and B follow the exception flags that the control word leaves
    /// unmasked, whenever FSW or FCW is loaded (as the host CPU does).
    public mutating func updateErrorSummary() {
        if fsw & 0x3F & ~fcw != 0 {
            fsw |= 0x8080
        } else {
            fsw &= ~0x8080
        }
    }

    /// An unmasked x87 exception is pending: the next waiting x87 or MMX
    /// instruction takes #MF.
    public var exceptionPending: Bool { fsw & 0x80 != 0 }

    // MARK: MMX

    /// MMi: the significand of Ri.
    @inline(__always)
    public mutating func mm(_ index: Int) -> UInt64 { UInt64(truncatingIfNeeded: physical(index & 7)) }

    /// Writes MMi: the exponent and sign bits of Ri become all ones.
    @inline(__always)
    public mutating func setMM(_ index: Int, _ value: UInt64) {
        setPhysical(index & 7, UInt128(0xFFFF) << 64 | UInt128(value))
    }

    /// What every MMX instruction but EMMS does to the x87 state: TOP = 0, every register valid.
    @inline(__always)
    public mutating func enterMMX() {
        fsw &= ~0x3800
        tags = 0xFF
    }

    // MARK: FXSAVE image

    /// Writes the 512-byte FXSAVE image (SDM Vol. 1 table 10-2/10-3) into
    /// `image`: the 64-bit layout (FIP and FDP as 64-bit offsets) or the
    /// 32-bit one (offsets with FCS and FDS), `xmmCount` XMM registers (8
    /// outside 64-bit mode). Bytes 416-511 are not written, as on the host
    /// CPU. FXSAVE writes bytes 10-15 of each register slot as zero
    /// (`architectural`); KVM_GET_FPU and KVM_GET_XSAVE give them as they
    /// were set.
    public mutating func storeFXSAVE(to image: UnsafeMutableRawPointer, layout64: Bool, xmmCount: Int,
                                     architectural: Bool = true) {
        image.storeBytes(of: fcw, toByteOffset: 0, as: UInt16.self)
        image.storeBytes(of: fsw, toByteOffset: 2, as: UInt16.self)
        image.storeBytes(of: tags, toByteOffset: 4, as: UInt8.self)
        image.storeBytes(of: 0, toByteOffset: 5, as: UInt8.self)
        image.storeBytes(of: architectural ? fop & 0x7FF : fop, toByteOffset: 6, as: UInt16.self)
        if layout64 {
            image.storeBytes(of: fip, toByteOffset: 8, as: UInt64.self)
            image.storeBytes(of: fdp, toByteOffset: 16, as: UInt64.self)
        } else {
            image.storeBytes(of: UInt32(truncatingIfNeeded: fip), toByteOffset: 8, as: UInt32.self)
            image.storeBytes(of: UInt32(fcs), toByteOffset: 12, as: UInt32.self)
            image.storeBytes(of: UInt32(truncatingIfNeeded: fdp), toByteOffset: 16, as: UInt32.self)
            image.storeBytes(of: UInt32(fds), toByteOffset: 20, as: UInt32.self)
        }
        image.storeBytes(of: mxcsr, toByteOffset: 24, as: UInt32.self)
        image.storeBytes(of: Self.mxcsrMask, toByteOffset: 28, as: UInt32.self)
        let top = self.top
        let slotMask: UInt128 = architectural ? (1 << 80) - 1 : ~0
        for i in 0..<8 {
            image.storeBytes(of: physical(top + i) & slotMask, toByteOffset: 32 + i * 16, as: UInt128.self)
        }
        for i in 0..<16 {
            image.storeBytes(of: i < xmmCount ? xmm(i) : 0, toByteOffset: 160 + i * 16, as: UInt128.self)
        }
    }

    /// Loads an FXSAVE image; XMM registers past `xmmCount` keep their
    /// values. The caller has checked MXCSR against `mxcsrMask`. FXRSTOR
    /// (`architectural`) forces FCW's fixed bits and drops bytes 10-15 of
    /// the register slots; KVM_SET_FPU and KVM_SET_XSAVE keep every byte.
    public mutating func loadFXSAVE(from image: UnsafeRawPointer, layout64: Bool, xmmCount: Int,
                                    architectural: Bool = true) {
        fcw = image.loadUnaligned(fromByteOffset: 0, as: UInt16.self)
        if architectural { fcw = Self.controlWord(fcw) }
        fsw = image.loadUnaligned(fromByteOffset: 2, as: UInt16.self)
        tags = image.load(fromByteOffset: 4, as: UInt8.self)
        fop = image.loadUnaligned(fromByteOffset: 6, as: UInt16.self) & (architectural ? 0x7FF : 0xFFFF)
        if layout64 {
            fip = image.loadUnaligned(fromByteOffset: 8, as: UInt64.self)
            fdp = image.loadUnaligned(fromByteOffset: 16, as: UInt64.self)
            fcs = 0
            fds = 0
        } else {
            fip = UInt64(image.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
            fcs = image.loadUnaligned(fromByteOffset: 12, as: UInt16.self)
            fdp = UInt64(image.loadUnaligned(fromByteOffset: 16, as: UInt32.self))
            fds = image.loadUnaligned(fromByteOffset: 20, as: UInt16.self)
        }
        mxcsr = image.loadUnaligned(fromByteOffset: 24, as: UInt32.self)
        let top = self.top
        let slotMask: UInt128 = architectural ? (1 << 80) - 1 : ~0
        for i in 0..<8 {
            setPhysical(top + i, image.loadUnaligned(fromByteOffset: 32 + i * 16, as: UInt128.self) & slotMask)
        }
        for i in 0..<xmmCount {
            setXMM(i, image.loadUnaligned(fromByteOffset: 160 + i * 16, as: UInt128.self))
        }
    }

    /// Whether the x87 part (XSAVE component 0) is in its initial state
    /// (the one FNINIT gives, with every register zero).
    public mutating func x87IsInitial() -> Bool {
        guard fcw == 0x37F && fsw == 0 && tags == 0 && fop == 0 && fip == 0 && fdp == 0 && fcs == 0 && fds == 0
        else { return false }
        for i in 0..<8 where physical(i) != 0 { return false }
        return true
    }

    /// Whether the SSE part (XSAVE component 1) is in its initial state: XMM zero, MXCSR at its default.
    public mutating func sseIsInitial() -> Bool {
        guard mxcsr == Self.defaultMXCSR else { return false }
        for i in 0..<16 where xmm(i) != 0 { return false }
        return true
    }

    /// Puts the x87 part in its initial state, registers zeroed (XRSTOR of an absent component).
    public mutating func resetX87() {
        initializeX87()
        registers = InlineArray(repeating: 0)
    }

    /// Puts the SSE part in its initial state.
    public mutating func resetSSE() {
        mxcsr = Self.defaultMXCSR
        xmmRegisters = InlineArray(repeating: 0)
    }
}

extension FloatingPointState: Equatable {
    public static func == (lhs: FloatingPointState, rhs: FloatingPointState) -> Bool {
        var a = lhs, b = rhs
        guard a.fcw == b.fcw && a.fsw == b.fsw && a.tags == b.tags && a.fop == b.fop && a.fip == b.fip
            && a.fcs == b.fcs && a.fdp == b.fdp && a.fds == b.fds && a.mxcsr == b.mxcsr else { return false }
        for i in 0..<8 where a.physical(i) != b.physical(i) { return false }
        for i in 0..<16 where a.xmm(i) != b.xmm(i) { return false }
        return true
    }
}

/// An 80-bit x87 value: sign and 15-bit exponent, and a 64-bit significand
/// with its explicit integer bit (SDM Vol. 1 4.2.2).
public struct X87Value: Hashable, Sendable {
    public var significand: UInt64
    /// The sign in bit 15, the biased exponent in bits 0-14.
    public var signExponent: UInt16

    public init(significand: UInt64, signExponent: UInt16) {
        self.significand = significand
        self.signExponent = signExponent
    }

    /// The value held in a register slot (bits 80-127 dropped).
    public init(slot: UInt128) {
        significand = UInt64(truncatingIfNeeded: slot)
        signExponent = UInt16(truncatingIfNeeded: slot >> 64)
    }

    /// As a register slot, bits 80-127 zero.
    public var slot: UInt128 { UInt128(signExponent) << 64 | UInt128(significand) }

    public static let zero = X87Value(significand: 0, signExponent: 0)

    public var sign: Bool { signExponent & 0x8000 != 0 }
    public var exponent: UInt16 { signExponent & 0x7FFF }

    /// The tag the full tag word gives a non-empty register holding this
    /// value: 00 valid, 01 zero, 10 special (NaN, infinity, denormal,
    /// pseudo-denormal, unnormal and the other unsupported encodings).
    public var tag: UInt16 {
        let exponent = self.exponent
        if exponent == 0 { return significand == 0 ? 1 : 2 }
        if exponent == 0x7FFF { return 2 }
        return significand >> 63 == 1 ? 0 : 2
    }

    /// The 10 bytes FNSAVE, FRSTOR and FLD/FSTP m80 use.
    public init(bytes pointer: UnsafeRawPointer) {
        significand = pointer.loadUnaligned(as: UInt64.self)
        signExponent = pointer.loadUnaligned(fromByteOffset: 8, as: UInt16.self)
    }

    public func store(to pointer: UnsafeMutableRawPointer) {
        pointer.storeBytes(of: significand, as: UInt64.self)
        pointer.storeBytes(of: signExponent, toByteOffset: 8, as: UInt16.self)
    }

    #if arch(x86_64) || arch(i386)
    /// The host's extended-precision value with the same bits (only on
    /// hosts whose Float80 is the x87 format).
    public init(_ value: Float80) {
        var copy = value
        self = withUnsafeBytes(of: &copy) {
            X87Value(significand: $0.load(as: UInt64.self), signExponent: $0.load(fromByteOffset: 8, as: UInt16.self))
        }
    }

    public var float80: Float80 {
        var value: Float80 = 0
        withUnsafeMutableBytes(of: &value) {
            $0.storeBytes(of: significand, as: UInt64.self)
            $0.storeBytes(of: signExponent, toByteOffset: 8, as: UInt16.self)
        }
        return value
    }
    #endif
}
