// IEEE 754 binary32 and binary64 arithmetic done in integers, with the
// SSE rules: MXCSR rounding control, flush-to-zero, denormals-are-zero,
// the six exception flags, x86's NaN propagation (the first source's NaN
// wins, quietened) and its default NaN, the "QNaN floating-point
// indefinite" (Intel SDM Vol. 1 4.8.3.7, 4.9, 11.5). Integers rather than
// the host's FPU: every result and flag is the same on any host, and the
// host's rounding mode is never touched.
//
// Internally a finite non-zero value is (sign, exp, sig) with
// value = sig × 2^(exp − bias − 62), sig in [2^62, 2^63) once normalised:
// the same significand position for both formats, so that a conversion is
// a change of bias. Tininess is detected after rounding, as x86 does.

/// The MXCSR exception flags (bits 0-5); the masks are these shifted by 7.
public enum MXCSRFlag {
    public static let invalid: UInt32 = 1 << 0
    public static let denormal: UInt32 = 1 << 1
    public static let divideByZero: UInt32 = 1 << 2
    public static let overflow: UInt32 = 1 << 3
    public static let underflow: UInt32 = 1 << 4
    public static let precision: UInt32 = 1 << 5
    /// Detected before the computation (SDM 11.5.2): an unmasked one stops
    /// the instruction before the others are looked for.
    public static let preComputation: UInt32 = invalid | denormal | divideByZero
    public static let all: UInt32 = 0x3F
    public static let daz: UInt32 = 1 << 6
    public static let ftz: UInt32 = 1 << 15
}

/// The MXCSR controls for one operation, and the flags it raised.
struct FloatEnvironment {
    /// MXCSR.RC: 0 nearest even, 1 down, 2 up, 3 toward zero.
    var rounding: UInt32
    /// FTZ, which applies only while underflow is masked.
    var flushToZero: Bool
    var denormalsAreZero: Bool
    var underflowMasked: Bool
    var flags: UInt32 = 0

    init(mxcsr: UInt32) {
        rounding = (mxcsr >> 13) & 3
        underflowMasked = mxcsr & (MXCSRFlag.underflow << 7) != 0
        flushToZero = mxcsr & MXCSRFlag.ftz != 0 && underflowMasked
        denormalsAreZero = mxcsr & MXCSRFlag.daz != 0
    }
}

/// A binary interchange format.
protocol BinaryFormat {
    static var exponentBits: Int { get }
    static var fractionBits: Int { get }
}

enum Binary32: BinaryFormat {
    static var exponentBits: Int { 8 }
    static var fractionBits: Int { 23 }
}

enum Binary64: BinaryFormat {
    static var exponentBits: Int { 11 }
    static var fractionBits: Int { 52 }
}

/// `value >> count`, with every bit shifted out ORed into bit 0.
@inline(__always)
func shiftRightJam(_ value: UInt64, _ count: Int) -> UInt64 {
    if count <= 0 { return value }
    if count >= 64 { return value != 0 ? 1 : 0 }
    return (value >> UInt64(count)) | (value << UInt64(64 - count) != 0 ? 1 : 0)
}

/// Comparison outcomes.
enum FloatOrder {
    case less, equal, greater, unordered
}

/// The operations of one format on bit patterns (a binary32 value in the
/// low 32 bits).
enum SoftFloat<F: BinaryFormat> {
    static var fractionBits: UInt64 { UInt64(F.fractionBits) }
    static var bias: Int { (1 << (F.exponentBits - 1)) - 1 }
    static var maxExponent: Int { (1 << F.exponentBits) - 1 }
    static var signBit: UInt64 { 1 << UInt64(F.exponentBits + F.fractionBits) }
    static var fractionMask: UInt64 { (1 << fractionBits) - 1 }
    static var quietBit: UInt64 { 1 << (fractionBits - 1) }
    static var infinity: UInt64 { UInt64(maxExponent) << fractionBits }
    /// The QNaN floating-point indefinite: sign set, quiet bit set.
    static var defaultNaN: UInt64 { signBit | infinity | quietBit }

    @inline(__always) static func exponent(_ a: UInt64) -> Int { Int((a >> fractionBits) & UInt64(maxExponent)) }
    @inline(__always) static func fraction(_ a: UInt64) -> UInt64 { a & fractionMask }
    @inline(__always) static func sign(_ a: UInt64) -> Bool { a & signBit != 0 }
    @inline(__always) static func isNaN(_ a: UInt64) -> Bool { exponent(a) == maxExponent && fraction(a) != 0 }
    @inline(__always) static func isSignalingNaN(_ a: UInt64) -> Bool { isNaN(a) && a & quietBit == 0 }
    @inline(__always) static func isInfinity(_ a: UInt64) -> Bool { a & ~signBit == infinity }
    /// Zero, of either sign.
    @inline(__always) static func isZero(_ a: UInt64) -> Bool { a & ~signBit == 0 }
    @inline(__always) static func isDenormal(_ a: UInt64) -> Bool { exponent(a) == 0 && fraction(a) != 0 }

    /// DAZ turns a denormal operand into zero of its sign; otherwise a
    /// denormal operand is noted for the DE flag.
    @inline(__always)
    static func operand(_ a: UInt64, _ env: FloatEnvironment, _ denormal: inout Bool) -> UInt64 {
        guard isDenormal(a) else { return a }
        if env.denormalsAreZero { return a & signBit }
        denormal = true
        return a
    }

    /// A finite non-zero value, normalised.
    @inline(__always)
    static func unpack(_ a: UInt64) -> (exp: Int, sig: UInt64) {
        let e = exponent(a), f = fraction(a)
        let position = 62 - F.fractionBits
        if e == 0 {
            let shift = f.leadingZeroBitCount - 1
            return (1 - (shift - position), f << UInt64(shift))
        }
        return (e, (f | 1 << fractionBits) << UInt64(position))
    }

    /// The NaN a two-operand operation gives when one operand is a NaN:
    /// the first if it is one, else the second, quietened; IE for an SNaN.
    static func propagateNaN(_ a: UInt64, _ b: UInt64, _ env: inout FloatEnvironment) -> UInt64 {
        if isSignalingNaN(a) || isSignalingNaN(b) { env.flags |= MXCSRFlag.invalid }
        return isNaN(a) ? a | quietBit : b | quietBit
    }

    /// Rounds sig × 2^(exp − bias − 62) (sig normalised, or exp ≤ 0 for a
    /// tiny value) to the format, with overflow, underflow and FTZ.
    static func roundPack(_ sign: Bool, _ exp: Int, _ sig: UInt64, _ env: inout FloatEnvironment) -> UInt64 {
        let extra = UInt64(62 - F.fractionBits)
        let roundMask: UInt64 = (1 << extra) - 1
        let half: UInt64 = 1 << (extra - 1)
        let increment: UInt64
        switch env.rounding {
        case 0: increment = half
        case 1: increment = sign ? roundMask : 0
        case 2: increment = sign ? 0 : roundMask
        default: increment = 0
        }
        let signBits: UInt64 = sign ? signBit : 0
        var exp = exp, sig = sig
        if exp <= 0 {
            let tiny = exp < 0 || sig &+ increment < 1 << 63
            if tiny && env.flushToZero {
                env.flags |= MXCSRFlag.underflow | MXCSRFlag.precision
                return signBits
            }
            sig = shiftRightJam(sig, 1 - exp)
            exp = 0
            if tiny && (sig & roundMask != 0 || !env.underflowMasked) { env.flags |= MXCSRFlag.underflow }
        } else if exp >= maxExponent - 1 && (exp > maxExponent - 1 || sig &+ increment >= 1 << 63) {
            env.flags |= MXCSRFlag.overflow | MXCSRFlag.precision
            // Rounding toward zero from this sign gives the largest finite value.
            return signBits | (increment == 0 ? infinity - 1 : infinity)
        }
        let roundBits = sig & roundMask
        if roundBits != 0 { env.flags |= MXCSRFlag.precision }
        var rounded = (sig &+ increment) >> extra
        if roundBits == half && env.rounding == 0 { rounded &= ~1 }
        // The integer bit of a normal `rounded` adds the 1 that `exp - 1`
        // lacks; a carry out of the significand moves into the exponent.
        let field: UInt64 = exp == 0 ? 0 : UInt64(exp - 1) << fractionBits
        return signBits | (field &+ rounded)
    }

    /// Normalises sig (non-zero) before rounding.
    @inline(__always)
    static func normalizeRoundPack(_ sign: Bool, _ exp: Int, _ sig: UInt64, _ env: inout FloatEnvironment) -> UInt64 {
        let shift = sig.leadingZeroBitCount - 1
        if shift >= 0 { return roundPack(sign, exp - shift, sig << UInt64(shift), &env) }
        return roundPack(sign, exp + 1, shiftRightJam(sig, 1), &env)
    }

    // MARK: Arithmetic

    static func add(_ a: UInt64, _ b: UInt64, _ env: inout FloatEnvironment) -> UInt64 {
        addOrSubtract(a, b, negate: false, &env)
    }

    static func subtract(_ a: UInt64, _ b: UInt64, _ env: inout FloatEnvironment) -> UInt64 {
        addOrSubtract(a, b, negate: true, &env)
    }

    static func addOrSubtract(_ a: UInt64, _ b: UInt64, negate: Bool, _ env: inout FloatEnvironment) -> UInt64 {
        if isNaN(a) || isNaN(b) { return propagateNaN(a, b, &env) }
        var denormal = false
        let a = operand(a, env, &denormal)
        let b = operand(b, env, &denormal) ^ (negate ? signBit : 0)
        if denormal { env.flags |= MXCSRFlag.denormal }
        let signA = sign(a), signB = sign(b)
        if isInfinity(a) || isInfinity(b) {
            if isInfinity(a) && isInfinity(b) && signA != signB {
                env.flags |= MXCSRFlag.invalid
                return defaultNaN
            }
            return isInfinity(a) ? a : b
        }
        if isZero(a) && isZero(b) {
            if signA == signB { return a }
            return env.rounding == 1 ? signBit : 0
        }
        if isZero(b) { let (e, s) = unpack(a); return roundPack(signA, e, s, &env) }
        if isZero(a) { let (e, s) = unpack(b); return roundPack(signB, e, s, &env) }
        var (expA, sigA) = unpack(a)
        var (expB, sigB) = unpack(b)
        if signA == signB {
            if expA < expB { swap(&expA, &expB); swap(&sigA, &sigB) }
            // One bit of headroom for the carry (the low bits are zero, so nothing is lost).
            let sum = (sigA >> 1) + shiftRightJam(sigB >> 1, expA - expB)
            if sum >= 1 << 62 { return roundPack(signA, expA + 1, sum, &env) }
            return roundPack(signA, expA, sum << 1, &env)
        }
        var sign = signA
        if expA < expB || (expA == expB && sigA < sigB) {
            swap(&expA, &expB)
            swap(&sigA, &sigB)
            sign = signB
        }
        if expA == expB && sigA == sigB {
            // An exact zero is +0, and −0 when rounding down.
            return env.rounding == 1 ? signBit : 0
        }
        let difference = sigA - shiftRightJam(sigB, expA - expB)
        return normalizeRoundPack(sign, expA, difference, &env)
    }

    static func multiply(_ a: UInt64, _ b: UInt64, _ env: inout FloatEnvironment) -> UInt64 {
        if isNaN(a) || isNaN(b) { return propagateNaN(a, b, &env) }
        var denormal = false
        let a = operand(a, env, &denormal)
        let b = operand(b, env, &denormal)
        let sign = self.sign(a) != self.sign(b)
        let signBits: UInt64 = sign ? signBit : 0
        if isInfinity(a) || isInfinity(b) {
            if isZero(a) || isZero(b) {
                env.flags |= MXCSRFlag.invalid
                return defaultNaN
            }
            if denormal { env.flags |= MXCSRFlag.denormal }
            return signBits | infinity
        }
        if denormal { env.flags |= MXCSRFlag.denormal }
        if isZero(a) || isZero(b) { return signBits }
        let (expA, sigA) = unpack(a)
        let (expB, sigB) = unpack(b)
        // [2^124, 2^126) as high:low; keep the top bits from 2^63 up, jammed.
        let (high, low) = sigA.multipliedFullWidth(by: sigB)
        let sig = (high << 1) | (low >> 63) | (low << 1 != 0 ? 1 : 0)
        return normalizeRoundPack(sign, expA + expB - bias + 1, sig, &env)
    }

    static func divide(_ a: UInt64, _ b: UInt64, _ env: inout FloatEnvironment) -> UInt64 {
        if isNaN(a) || isNaN(b) { return propagateNaN(a, b, &env) }
        var denormal = false
        let a = operand(a, env, &denormal)
        let b = operand(b, env, &denormal)
        let sign = self.sign(a) != self.sign(b)
        let signBits: UInt64 = sign ? signBit : 0
        if isInfinity(a) {
            if isInfinity(b) {
                env.flags |= MXCSRFlag.invalid
                return defaultNaN
            }
            if denormal { env.flags |= MXCSRFlag.denormal }
            return signBits | infinity
        }
        if isInfinity(b) {
            if denormal { env.flags |= MXCSRFlag.denormal }
            return signBits
        }
        if isZero(b) {
            if isZero(a) {
                env.flags |= MXCSRFlag.invalid
                return defaultNaN
            }
            // ZE outranks DE: a denormal dividend is not reported.
            env.flags |= MXCSRFlag.divideByZero
            return signBits | infinity
        }
        if denormal { env.flags |= MXCSRFlag.denormal }
        if isZero(a) { return signBits }
        let (expA, sigA) = unpack(a)
        let (expB, sigB) = unpack(b)
        // sigA × 2^63 / sigB, in (2^62, 2^64).
        let (quotient, remainder) = sigB.dividingFullWidth((sigA >> 1, sigA << 63))
        let sticky: UInt64 = remainder != 0 ? 1 : 0
        if quotient >= 1 << 63 {
            return roundPack(sign, expA - expB + bias, (quotient >> 1) | (quotient & 1) | sticky, &env)
        }
        return roundPack(sign, expA - expB + bias - 1, quotient | sticky, &env)
    }

    static func squareRoot(_ a: UInt64, _ env: inout FloatEnvironment) -> UInt64 {
        if isNaN(a) {
            if isSignalingNaN(a) { env.flags |= MXCSRFlag.invalid }
            return a | quietBit
        }
        var denormal = false
        let a = operand(a, env, &denormal)
        if isZero(a) { return a }
        if sign(a) {
            // IE outranks DE: a negative denormal is not reported as one.
            env.flags |= MXCSRFlag.invalid
            return defaultNaN
        }
        if denormal { env.flags |= MXCSRFlag.denormal }
        if isInfinity(a) { return a }
        let (exp, sig) = unpack(a)
        let unbiased = exp - bias
        // sig × 2^62 (× 2 for an odd exponent) has its root in [2^62, 2^63).
        let radicand = UInt128(sig) << UInt128(62 + (unbiased & 1))
        let (root, exact) = integerSquareRoot(radicand)
        return roundPack(false, (unbiased >> 1) + bias, root | (exact ? 0 : 1), &env)
    }

    // MARK: Comparison

    /// Compares; a NaN operand makes it unordered, and raises IE when it is
    /// an SNaN or the comparison is a signalling one (LT, LE, COMISS...).
    static func compare(_ a: UInt64, _ b: UInt64, signaling: Bool, _ env: inout FloatEnvironment) -> FloatOrder {
        if isNaN(a) || isNaN(b) {
            if signaling || isSignalingNaN(a) || isSignalingNaN(b) { env.flags |= MXCSRFlag.invalid }
            return .unordered
        }
        var denormal = false
        let a = operand(a, env, &denormal)
        let b = operand(b, env, &denormal)
        if denormal { env.flags |= MXCSRFlag.denormal }
        if isZero(a) && isZero(b) { return .equal }
        if a == b { return .equal }
        let signA = sign(a), signB = sign(b)
        if signA != signB { return signA ? .less : .greater }
        let magnitudeLess = a & ~signBit < b & ~signBit
        return magnitudeLess != signA ? .less : .greater
    }

    /// MINSS/MAXSS and the packed forms: the second operand when either is
    /// a NaN (IE for any NaN) or both are zeros, else the smaller (larger).
    static func minMax(_ a: UInt64, _ b: UInt64, maximum: Bool, _ env: inout FloatEnvironment) -> UInt64 {
        // DAZ applies first: even the second operand returned for a NaN is flushed.
        var denormal = false
        let a = operand(a, env, &denormal)
        let b = operand(b, env, &denormal)
        if isNaN(a) || isNaN(b) {
            env.flags |= MXCSRFlag.invalid
            return b
        }
        if denormal { env.flags |= MXCSRFlag.denormal }
        var unused = FloatEnvironment(mxcsr: 0)
        let order = compare(a, b, signaling: false, &unused)
        return order == (maximum ? .greater : .less) ? a : b
    }

    // MARK: Conversions

    /// To another format: NaNs keep their payload's high bits, quietened.
    static func convert<G: BinaryFormat>(_ a: UInt64, to: G.Type, _ env: inout FloatEnvironment) -> UInt64 {
        typealias Target = SoftFloat<G>
        let signBits: UInt64 = sign(a) ? Target.signBit : 0
        if isNaN(a) {
            if isSignalingNaN(a) { env.flags |= MXCSRFlag.invalid }
            let payload = G.fractionBits >= F.fractionBits
                ? fraction(a) << UInt64(G.fractionBits - F.fractionBits)
                : fraction(a) >> UInt64(F.fractionBits - G.fractionBits)
            return signBits | Target.infinity | Target.quietBit | payload
        }
        if isInfinity(a) { return signBits | Target.infinity }
        var denormal = false
        let a = operand(a, env, &denormal)
        if denormal { env.flags |= MXCSRFlag.denormal }
        if isZero(a) { return signBits }
        let (exp, sig) = unpack(a)
        return Target.roundPack(sign(a), exp - bias + Target.bias, sig, &env)
    }

    /// A signed integer, rounded by MXCSR.
    static func fromInteger(_ value: Int64, _ env: inout FloatEnvironment) -> UInt64 {
        if value == 0 { return 0 }
        let magnitude = value.magnitude
        let zeros = magnitude.leadingZeroBitCount
        if zeros == 0 { return roundPack(value < 0, bias + 63, shiftRightJam(magnitude, 1), &env) }
        return roundPack(value < 0, bias + 63 - zeros, magnitude << UInt64(zeros - 1), &env)
    }

    /// A signed integer of `bits` bits (32 or 64), rounded by MXCSR or
    /// truncated; a NaN, an infinity or a value out of range gives the
    /// integer indefinite (only the sign bit set) and IE. No DE: the
    /// conversions to integers do not report denormal operands.
    static func toInteger(_ a: UInt64, bits: Int, truncate: Bool, _ env: inout FloatEnvironment) -> UInt64 {
        let indefinite: UInt64 = 1 << UInt64(bits - 1)
        if isNaN(a) || isInfinity(a) {
            env.flags |= MXCSRFlag.invalid
            return indefinite
        }
        if isZero(a) || (isDenormal(a) && env.denormalsAreZero) { return 0 }
        let negative = sign(a)
        let (exp, sig) = unpack(a)
        let shift = exp - bias - 62
        var magnitude: UInt64
        var increment = false
        var inexact = false
        if shift >= 0 {
            guard shift <= 1 else {
                env.flags |= MXCSRFlag.invalid
                return indefinite
            }
            magnitude = sig << UInt64(shift)
            if shift == 1 && sig > 1 << 62 {  // beyond 2^63
                env.flags |= MXCSRFlag.invalid
                return indefinite
            }
        } else {
            let count = -shift
            let whole = count >= 64 ? 0 : sig >> UInt64(count)
            let rest = count >= 64 ? sig : sig & ((1 << UInt64(count)) - 1)
            magnitude = whole
            inexact = rest != 0
            // Where the rest lies against one half (below it when the whole value is under 2^-1).
            let aboveHalf = count < 64 && rest > 1 << UInt64(count - 1)
            let atHalf = count < 64 && rest == 1 << UInt64(count - 1)
            switch truncate ? 3 : env.rounding {
            case 0: increment = aboveHalf || (atHalf && whole & 1 == 1)
            case 1: increment = negative && inexact
            case 2: increment = !negative && inexact
            default: increment = false
            }
        }
        if increment { magnitude += 1 }
        let limit: UInt64 = negative ? indefinite : indefinite - 1
        if magnitude > limit {
            env.flags |= MXCSRFlag.invalid
            return indefinite
        }
        if inexact { env.flags |= MXCSRFlag.precision }
        let mask: UInt64 = bits == 64 ? ~0 : (1 << UInt64(bits)) - 1
        return (negative ? 0 &- magnitude : magnitude) & mask
    }
}

/// The integer square root of `value` (which is below 2^126), and whether it is exact.
func integerSquareRoot(_ value: UInt128) -> (root: UInt64, exact: Bool) {
    if value == 0 { return (0, true) }
    // A floating-point estimate, then Newton's step: the error of the
    // estimate (about 2^-52 relative) leaves the step within one of the root.
    var root = UInt64(Double(value).squareRoot())
    if root == 0 { root = 1 }
    let high = UInt64(truncatingIfNeeded: value >> 64), low = UInt64(truncatingIfNeeded: value)
    if high < root {
        let (quotient, _) = root.dividingFullWidth((high, low))
        root = UInt64((UInt128(root) + UInt128(quotient)) >> 1)
    }
    func square(_ r: UInt64) -> UInt128 { UInt128(r) * UInt128(r) }
    while square(root) > value { root -= 1 }
    while square(root + 1) <= value { root += 1 }
    return (root, square(root) == value)
}
