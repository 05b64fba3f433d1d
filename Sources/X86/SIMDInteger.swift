// The integer SIMD operations of MMX and SSE2 as pure functions of 128-bit
// values (Intel SDM Vol. 2, each instruction's "Operation"). An MMX
// operand is the same computation on values in the low 64 bits: every
// lane-wise operation then gives the MMX result in the low half; the few
// that move lanes across the halves (packs, high unpacks, word indexes)
// take `mmx` into account.

typealias U8x16 = SIMD16<UInt8>
typealias I8x16 = SIMD16<Int8>
typealias U16x8 = SIMD8<UInt16>
typealias I16x8 = SIMD8<Int16>
typealias U32x4 = SIMD4<UInt32>
typealias I32x4 = SIMD4<Int32>
typealias U64x2 = SIMD2<UInt64>

@inline(__always) func lanes<V: SIMD>(_ value: UInt128, _ type: V.Type) -> V { unsafeBitCast(value, to: V.self) }
@inline(__always) func bits<V: SIMD>(_ vector: V) -> UInt128 { unsafeBitCast(vector, to: UInt128.self) }

/// Element `index` of `width` bits.
@inline(__always)
func element(_ value: UInt128, _ index: Int, width: Int) -> UInt64 {
    let shifted = UInt64(truncatingIfNeeded: value >> (index &* width))
    return width == 64 ? shifted : shifted & ((1 << UInt64(width)) - 1)
}

/// `value` with element `index` of `width` bits replaced.
@inline(__always)
func replacing(_ value: UInt128, _ index: Int, width: Int, with element: UInt64) -> UInt128 {
    let mask: UInt128 = ((1 << UInt128(width)) - 1) << (index &* width)
    return (value & ~mask) | ((UInt128(element) << (index &* width)) & mask)
}

enum SIMDInteger {
    /// Whether `0F op` is one of the two-operand integer instructions `binary` computes.
    static func isBinary(_ op: Int) -> Bool {
        switch op {
        case 0x60...0x6D, 0x74...0x76, 0xD1...0xD5, 0xD8...0xE5, 0xE8...0xEF, 0xF1...0xF6, 0xF8...0xFE: return true
        default: return false
        }
    }

    /// The operation of a two-operand integer instruction `0F op` (66 for
    /// XMM, none for MMX), or nil when `op` is not one.
    static func binary(_ op: Int, _ a: UInt128, _ b: UInt128, mmx: Bool) -> UInt128? {
        switch op {
        // Unpacks: the low halves interleaved; a high unpack is a low one of the upper halves.
        case 0x60, 0x61, 0x62, 0x6C:
            return unpackLow(a, b, width: 8 << (op == 0x6C ? 3 : op - 0x60))
        case 0x68, 0x69, 0x6A, 0x6D:
            let half = mmx ? 32 : 64
            return unpackLow(a >> half, b >> half, width: 8 << (op == 0x6D ? 3 : op - 0x68))
        case 0x63: return pack(a, b, from: 16, to: 8, signed: true, count: mmx ? 4 : 8)
        case 0x67: return pack(a, b, from: 16, to: 8, signed: false, count: mmx ? 4 : 8)
        case 0x6B: return pack(a, b, from: 32, to: 16, signed: true, count: mmx ? 2 : 4)
        case 0x64: return bits(I8x16(repeating: 0).replacing(with: -1, where: lanes(a, I8x16.self) .> lanes(b, I8x16.self)))
        case 0x65: return bits(I16x8(repeating: 0).replacing(with: -1, where: lanes(a, I16x8.self) .> lanes(b, I16x8.self)))
        case 0x66: return bits(I32x4(repeating: 0).replacing(with: -1, where: lanes(a, I32x4.self) .> lanes(b, I32x4.self)))
        case 0x74: return bits(U8x16(repeating: 0).replacing(with: .max, where: lanes(a, U8x16.self) .== lanes(b, U8x16.self)))
        case 0x75: return bits(U16x8(repeating: 0).replacing(with: .max, where: lanes(a, U16x8.self) .== lanes(b, U16x8.self)))
        case 0x76: return bits(U32x4(repeating: 0).replacing(with: .max, where: lanes(a, U32x4.self) .== lanes(b, U32x4.self)))
        case 0xD1, 0xD2, 0xD3, 0xE1, 0xE2, 0xF1, 0xF2, 0xF3:
            return shift(op, a, count: UInt64(truncatingIfNeeded: b))
        case 0xD4: return bits(lanes(a, U64x2.self) &+ lanes(b, U64x2.self))
        case 0xD5: return bits(lanes(a, U16x8.self) &* lanes(b, U16x8.self))
        case 0xD8: return bits(U8x16(clamping: SIMD16<Int16>(truncatingIfNeeded: lanes(a, U8x16.self)) &- SIMD16<Int16>(truncatingIfNeeded: lanes(b, U8x16.self))))
        case 0xD9: return bits(U16x8(clamping: SIMD8<Int32>(truncatingIfNeeded: lanes(a, U16x8.self)) &- SIMD8<Int32>(truncatingIfNeeded: lanes(b, U16x8.self))))
        case 0xDA: return bits(pointwiseMin(lanes(a, U8x16.self), lanes(b, U8x16.self)))
        case 0xDB: return a & b
        case 0xDC: return bits(U8x16(clamping: SIMD16<Int16>(truncatingIfNeeded: lanes(a, U8x16.self)) &+ SIMD16<Int16>(truncatingIfNeeded: lanes(b, U8x16.self))))
        case 0xDD: return bits(U16x8(clamping: SIMD8<Int32>(truncatingIfNeeded: lanes(a, U16x8.self)) &+ SIMD8<Int32>(truncatingIfNeeded: lanes(b, U16x8.self))))
        case 0xDE: return bits(pointwiseMax(lanes(a, U8x16.self), lanes(b, U8x16.self)))
        case 0xDF: return ~a & b
        case 0xE0:
            let sum = SIMD16<UInt16>(truncatingIfNeeded: lanes(a, U8x16.self)) &+ SIMD16<UInt16>(truncatingIfNeeded: lanes(b, U8x16.self)) &+ 1
            return bits(U8x16(truncatingIfNeeded: sum &>> 1))
        case 0xE3:
            let sum = SIMD8<UInt32>(truncatingIfNeeded: lanes(a, U16x8.self)) &+ SIMD8<UInt32>(truncatingIfNeeded: lanes(b, U16x8.self)) &+ 1
            return bits(U16x8(truncatingIfNeeded: sum &>> 1))
        case 0xE4:
            let product = SIMD8<UInt32>(truncatingIfNeeded: lanes(a, U16x8.self)) &* SIMD8<UInt32>(truncatingIfNeeded: lanes(b, U16x8.self))
            return bits(U16x8(truncatingIfNeeded: product &>> 16))
        case 0xE5:
            let product = SIMD8<Int32>(truncatingIfNeeded: lanes(a, I16x8.self)) &* SIMD8<Int32>(truncatingIfNeeded: lanes(b, I16x8.self))
            return bits(I16x8(truncatingIfNeeded: product &>> 16))
        case 0xE8: return bits(I8x16(clamping: SIMD16<Int16>(truncatingIfNeeded: lanes(a, I8x16.self)) &- SIMD16<Int16>(truncatingIfNeeded: lanes(b, I8x16.self))))
        case 0xE9: return bits(I16x8(clamping: SIMD8<Int32>(truncatingIfNeeded: lanes(a, I16x8.self)) &- SIMD8<Int32>(truncatingIfNeeded: lanes(b, I16x8.self))))
        case 0xEA: return bits(pointwiseMin(lanes(a, I16x8.self), lanes(b, I16x8.self)))
        case 0xEB: return a | b
        case 0xEC: return bits(I8x16(clamping: SIMD16<Int16>(truncatingIfNeeded: lanes(a, I8x16.self)) &+ SIMD16<Int16>(truncatingIfNeeded: lanes(b, I8x16.self))))
        case 0xED: return bits(I16x8(clamping: SIMD8<Int32>(truncatingIfNeeded: lanes(a, I16x8.self)) &+ SIMD8<Int32>(truncatingIfNeeded: lanes(b, I16x8.self))))
        case 0xEE: return bits(pointwiseMax(lanes(a, I16x8.self), lanes(b, I16x8.self)))
        case 0xEF: return a ^ b
        case 0xF4:
            let x = lanes(a, U32x4.self), y = lanes(b, U32x4.self)
            return bits(U64x2(UInt64(x[0]) &* UInt64(y[0]), UInt64(x[2]) &* UInt64(y[2])))
        case 0xF5:
            let product = SIMD8<Int32>(truncatingIfNeeded: lanes(a, I16x8.self)) &* SIMD8<Int32>(truncatingIfNeeded: lanes(b, I16x8.self))
            return bits(product.evenHalf &+ product.oddHalf)
        case 0xF6:
            let x = SIMD16<Int16>(truncatingIfNeeded: lanes(a, U8x16.self)), y = SIMD16<Int16>(truncatingIfNeeded: lanes(b, U8x16.self))
            let difference = x &- y
            let absolute = difference.replacing(with: 0 &- difference, where: difference .< 0)
            return UInt128(UInt64(absolute.lowHalf.wrappedSum())) | UInt128(UInt64(absolute.highHalf.wrappedSum())) << 64
        case 0xF8: return bits(lanes(a, U8x16.self) &- lanes(b, U8x16.self))
        case 0xF9: return bits(lanes(a, U16x8.self) &- lanes(b, U16x8.self))
        case 0xFA: return bits(lanes(a, U32x4.self) &- lanes(b, U32x4.self))
        case 0xFB: return bits(lanes(a, U64x2.self) &- lanes(b, U64x2.self))
        case 0xFC: return bits(lanes(a, U8x16.self) &+ lanes(b, U8x16.self))
        case 0xFD: return bits(lanes(a, U16x8.self) &+ lanes(b, U16x8.self))
        case 0xFE: return bits(lanes(a, U32x4.self) &+ lanes(b, U32x4.self))
        default: return nil
        }
    }

    /// The low 64 bits of `a` and `b` interleaved element by element.
    static func unpackLow(_ a: UInt128, _ b: UInt128, width: Int) -> UInt128 {
        var result: UInt128 = 0
        for index in 0..<(64 / width) {
            result = replacing(result, 2 * index, width: width, with: element(a, index, width: width))
            result = replacing(result, 2 * index + 1, width: width, with: element(b, index, width: width))
        }
        return result
    }

    /// `count` elements of `a` then `count` of `b`, each narrowed with saturation.
    static func pack(_ a: UInt128, _ b: UInt128, from: Int, to: Int, signed: Bool, count: Int) -> UInt128 {
        var result: UInt128 = 0
        for index in 0..<(2 * count) {
            let source = index < count ? a : b
            let value = Int64(bitPattern: signExtend(element(source, index % count, width: from), size: from / 8))
            let low: Int64 = signed ? -(1 << Int64(to - 1)) : 0
            let high: Int64 = signed ? (1 << Int64(to - 1)) - 1 : (1 << Int64(to)) - 1
            let narrowed = UInt64(bitPattern: min(max(value, low), high))
            result = replacing(result, index, width: to, with: narrowed)
        }
        return result
    }

    /// PSRLW/D/Q, PSRAW/D, PSLLW/D/Q by `count` (`0F op` of the register
    /// forms; the immediate forms map to them): a count beyond the element
    /// width gives 0, or the sign for the arithmetic shifts.
    static func shift(_ op: Int, _ a: UInt128, count: UInt64) -> UInt128 {
        switch op {
        case 0xD1: return count > 15 ? 0 : bits(lanes(a, U16x8.self) &>> UInt16(count))
        case 0xD2: return count > 31 ? 0 : bits(lanes(a, U32x4.self) &>> UInt32(count))
        case 0xD3: return count > 63 ? 0 : bits(lanes(a, U64x2.self) &>> UInt64(count))
        case 0xE1: return bits(lanes(a, I16x8.self) &>> Int16(min(count, 15)))
        case 0xE2: return bits(lanes(a, I32x4.self) &>> Int32(min(count, 31)))
        case 0xF1: return count > 15 ? 0 : bits(lanes(a, U16x8.self) &<< UInt16(count))
        case 0xF2: return count > 31 ? 0 : bits(lanes(a, U32x4.self) &<< UInt32(count))
        default: return count > 63 ? 0 : bits(lanes(a, U64x2.self) &<< UInt64(count))
        }
    }

    /// PSHUFD's (and SHUFPS's single-source) selection: element i of the
    /// result is element imm[2i+1:2i] of `a`, for four elements of `width` bits.
    static func shuffle(_ a: UInt128, _ immediate: UInt64, width: Int) -> UInt128 {
        var result: UInt128 = 0
        for index in 0..<4 {
            let source = Int((immediate >> UInt64(2 * index)) & 3)
            result = replacing(result, index, width: width, with: element(a, source, width: width))
        }
        return result
    }

    /// PMOVMSKB: the top bit of each byte.
    static func byteMask(_ a: UInt128, count: Int) -> UInt64 {
        var mask: UInt64 = 0
        for index in 0..<count where element(a, index, width: 8) & 0x80 != 0 { mask |= 1 << UInt64(index) }
        return mask
    }
}
