// The SSE/SSE2 floating-point operations on 128-bit values, lane by lane,
// with the SIMD exception rules of Intel SDM Vol. 1 11.5.2: pre-computation
// exceptions (IE, DE, ZE) of all lanes are looked at first; an unmasked one
// ends the instruction before the post-computation ones (OE, UE, PE) are
// recorded, and no result is written whenever an unmasked exception occurs.

/// The flags an operation raised, split as the SDM orders them.
struct SIMDExceptions {
    var pre: UInt32 = 0
    var post: UInt32 = 0

    @inline(__always)
    mutating func record(_ env: inout FloatEnvironment) {
        pre |= env.flags & MXCSRFlag.preComputation
        post |= env.flags & ~MXCSRFlag.preComputation
        env.flags = 0
    }
}

enum SIMDFloat {
    /// One lane of `0F op` (58 ADD, 59 MUL, 5C SUB, 5D MIN, 5E DIV, 5F MAX,
    /// 51 SQRT of `b`, C2 CMP with `predicate`) in format F.
    static func lane<F: BinaryFormat>(_ op: Int, _ a: UInt64, _ b: UInt64, predicate: Int,
                                      _ env: inout FloatEnvironment, _ format: F.Type) -> UInt64 {
        typealias S = SoftFloat<F>
        switch op {
        case 0x58: return S.add(a, b, &env)
        case 0x59: return S.multiply(a, b, &env)
        case 0x5C: return S.subtract(a, b, &env)
        case 0x5D: return S.minMax(a, b, maximum: false, &env)
        case 0x5E: return S.divide(a, b, &env)
        case 0x5F: return S.minMax(a, b, maximum: true, &env)
        case 0x51: return S.squareRoot(b, &env)
        default: return comparePredicate(a, b, predicate, &env, format) ? S.signBit | (S.signBit - 1) : 0
        }
    }

    /// CMPPS's predicates 0-7: EQ LT LE UNORD NEQ NLT NLE ORD; LT, LE, NLT
    /// and NLE signal on a QNaN too.
    static func comparePredicate<F: BinaryFormat>(_ a: UInt64, _ b: UInt64, _ predicate: Int,
                                                  _ env: inout FloatEnvironment, _ format: F.Type) -> Bool {
        let predicate = predicate & 7
        let signaling = predicate & 3 == 1 || predicate & 3 == 2
        let order = SoftFloat<F>.compare(a, b, signaling: signaling, &env)
        switch predicate {
        case 0: return order == .equal
        case 1: return order == .less
        case 2: return order == .less || order == .equal
        case 3: return order == .unordered
        case 4: return order != .equal
        case 5: return order != .less
        case 6: return order != .less && order != .equal
        default: return order != .unordered
        }
    }

    /// Applies a lane operation to `lanes` lanes of `width` bits (32 or
    /// 64); lanes past `lanes` keep `a`'s values.
    static func apply(_ op: Int, _ a: UInt128, _ b: UInt128, lanes: Int, width: Int, predicate: Int,
                      mxcsr: UInt32, _ exceptions: inout SIMDExceptions) -> UInt128 {
        var env = FloatEnvironment(mxcsr: mxcsr)
        var result = a
        for index in 0..<lanes {
            let x = element(a, index, width: width), y = element(b, index, width: width)
            let value = width == 32
                ? lane(op, x, y, predicate: predicate, &env, Binary32.self)
                : lane(op, x, y, predicate: predicate, &env, Binary64.self)
            exceptions.record(&env)
            result = replacing(result, index, width: width, with: value)
        }
        return result
    }

    // MARK: Approximations

    /// RCPSS: 1/x, within the SDM's relative error of 1.5 × 2^-12 (here
    /// the correctly rounded value). A denormal or zero gives an infinity,
    /// a tiny result flushes to zero, NaNs are quietened, and nothing is
    /// flagged.
    static func reciprocal(_ a: UInt64) -> UInt64 {
        typealias S = SoftFloat<Binary32>
        if S.isNaN(a) { return a | S.quietBit }
        let sign = a & S.signBit
        if S.exponent(a) == 0 { return sign | S.infinity }
        if S.isInfinity(a) { return sign }
        let value = Float(1 / Double(Float(bitPattern: UInt32(a))))
        if value.magnitude < Float.leastNormalMagnitude { return sign }
        return UInt64(value.bitPattern)
    }

    /// RSQRTSS: 1/√x, as `reciprocal`; a negative non-zero operand gives the default NaN.
    static func reciprocalSquareRoot(_ a: UInt64) -> UInt64 {
        typealias S = SoftFloat<Binary32>
        if S.isNaN(a) { return a | S.quietBit }
        let sign = a & S.signBit
        if S.exponent(a) == 0 { return sign | S.infinity }
        if sign != 0 { return S.defaultNaN }
        if S.isInfinity(a) { return 0 }
        let value = Float(1 / Double(Float(bitPattern: UInt32(a))).squareRoot())
        return UInt64(value.bitPattern)
    }
}
