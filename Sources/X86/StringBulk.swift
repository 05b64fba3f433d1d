// The bulk path of REP MOVS and REP STOS: the elements that lie, whole, in
// the current source and destination pages move in one host operation when
// both pages are in the host TLB with the access's permission, or, right
// after an element of the same pages went the element way, when the walk
// finds them in RAM (`bulkTranslate`). The host TLB holds no page that
// needs anything per store (MMIO, read-only or dirty-logged ranges, pages
// with decoded code: see `fillHostTLB`); `bulkTranslate` declines MMIO,
// read-only and code pages and marks the dirty log. Whatever the bulk path
// declines goes one element the architectural way (`executeString`), which
// raises faults at their element, exits for MMIO, notes stores into code
// and fills the TLBs for the next chunk. Backward (DF=1) strings, data
// breakpoints, single-stepping and runs without the decoded cache (the
// reference the tests compare with) take the element path throughout.

import Glibc

extension X86CPU {
    /// Moves or stores up to `budget` elements of a REP MOVS (A4/A5) or REP
    /// STOS (AA/AB) going forward with RCX != 0; returns how many, after
    /// updating RCX, RSI and RDI, or 0 when the next element must take the
    /// element-by-element path.
    mutating func bulkString(_ op: Int, size: Int, addressSize: Int, source: Int, budget: Int,
                             primed: (source: UInt64, destination: UInt64)) -> Int {
        let addressMask = sizeMask(addressSize)
        let elementSize = UInt64(truncatingIfNeeded: size)
        var count = min(state.read(1, size: addressSize, legacyHighBytes: false), UInt64(truncatingIfNeeded: budget))
        let di = state.reg(7) & addressMask
        let es = SegmentRegisterName.es.rawValue
        let moves = op <= 0xA5
        let si = state.reg(6) & addressMask
        if addressSize < 8 {
            // The offsets wrap within the address size: stop where one would.
            count = min(count, (addressMask - di + 1) / elementSize)
            if moves { count = min(count, (addressMask - si + 1) / elementSize) }
        }
        guard let destinationLinear = bulkBase(es, di) else { return 0 }
        count = min(count, (0x1000 - (destinationLinear & 0xFFF)) / elementSize)
        var sourceLinear: UInt64 = 0
        if moves {
            guard let linear = bulkBase(source, si) else { return 0 }
            sourceLinear = linear
            count = min(count, (0x1000 - (sourceLinear & 0xFFF)) / elementSize)
        }
        // An element that straddles a page goes the slow way.
        if count == 0 { return 0 }
        guard bulkSegmentAllows(es, di, bytes: count &* elementSize, write: true),
              !moves || bulkSegmentAllows(source, si, bytes: count &* elementSize, write: false),
              let destination = bulkHost(destinationLinear, write: true)
                ?? (destinationLinear & ~0xFFF == primed.destination && (!moves || sourceLinear & ~0xFFF == primed.source)
                    ? bulkTranslate(destinationLinear, bytes: count &* elementSize, .write) : nil) else { return 0 }
        if moves {
            guard let from = bulkHost(sourceLinear, write: false)
                ?? (sourceLinear & ~0xFFF == primed.source ? bulkTranslate(sourceLinear, bytes: count &* elementSize, .read) : nil)
            else { return 0 }
            // Elements go one by one forward: a destination that starts inside
            // the source ahead of it sees the elements just stored (a repeated
            // pattern), so each chunk stops at that distance.
            let distance = UInt(bitPattern: destination) &- UInt(bitPattern: from)
            if distance != 0 && distance < UInt(count &* elementSize) {
                count = min(count, UInt64(distance) / elementSize)
                if count == 0 { return 0 }
            }
            memmove(destination, from, Int(count &* elementSize))
            state.write(6, si &+ count &* elementSize, size: addressSize, legacyHighBytes: false)
        } else {
            let value = state.read(0, size: size, legacyHighBytes: false)
            let n = Int(count)
            switch size {
            case 1: memset(destination, Int32(truncatingIfNeeded: value), n)
            case 2:
                for i in 0..<n { destination.storeBytes(of: UInt16(truncatingIfNeeded: value), toByteOffset: i &* 2, as: UInt16.self) }
            case 4:
                for i in 0..<n { destination.storeBytes(of: UInt32(truncatingIfNeeded: value), toByteOffset: i &* 4, as: UInt32.self) }
            default:
                for i in 0..<n { destination.storeBytes(of: value, toByteOffset: i &* 8, as: UInt64.self) }
            }
        }
        state.write(7, di &+ count &* elementSize, size: addressSize, legacyHighBytes: false)
        let left = (state.read(1, size: addressSize, legacyHighBytes: false) &- count) & addressMask
        state.write(1, left, size: addressSize, legacyHighBytes: false)
        return Int(count)
    }

    /// The linear address of `segment:offset` when it is canonical (64-bit
    /// mode), else nil; the limits are `bulkSegmentAllows`'s.
    @inline(__always)
    mutating func bulkBase(_ segment: Int, _ offset: UInt64) -> UInt64? {
        if case .long64 = state.mode {
            let address = segment >= SegmentRegisterName.fs.rawValue ? state.segmentBase(segment) &+ offset : offset
            let top = Int64(bitPattern: address) >> 47
            return top == 0 || top == -1 ? address : nil
        }
        return (state.segmentBase(segment) &+ offset) & 0xFFFF_FFFF
    }

    /// Whether all `bytes` at `offset` pass the segment's checks (64-bit
    /// mode has none but the canonical rule, which holds for a whole page).
    @inline(__always)
    mutating func bulkSegmentAllows(_ segment: Int, _ offset: UInt64, bytes: UInt64, write: Bool) -> Bool {
        if case .long64 = state.mode { return true }
        let s = state[segmentIndex: segment]
        if s.limit == 0xFFFF_FFFF && s.attributes & 0x9E == 0x92 && offset &+ bytes <= 0x1_0000_0000 { return true }
        return segmentAllows(s, offset, size: Int(truncatingIfNeeded: bytes), write: write)
    }

    /// The host address of `bytes` of RAM at a linear address, through the
    /// TLB or the walk, when the element just done the element-by-element
    /// way was in the same page (the host TLB slots of a source and a
    /// destination 1 MiB apart are the same: each evicts the other): that
    /// element's walk set the A and D bits and raised any fault, so this one
    /// repeats it without effect. Pages holding code are declined (their
    /// stores are noted one by one); a dirty log is marked by `hostPointer`.
    mutating func bulkTranslate(_ linear: UInt64, bytes: UInt64, _ access: Access) -> UnsafeMutableRawPointer? {
        let (savedPending, savedCR2) = (pending, state.cr2)
        guard let physical = translate(linear, access) else {
            (pending, state.cr2) = (savedPending, savedCR2)
            return nil
        }
        if access == .write && (isCodePage(physical) || isCodePage(physical &+ bytes &- 1)) { return nil }
        return hostPointer(physical, size: Int(truncatingIfNeeded: bytes), write: access == .write)
    }

    /// The host address of a linear address whose page the host TLB holds
    /// for the access, or nil.
    @inline(__always)
    func bulkHost(_ linear: UInt64, write: Bool) -> UnsafeMutableRawPointer? {
        let page = linear >> 12
        let entry = decoded.hostTLB + Int(truncatingIfNeeded: page) & (HostTLBEntry.count - 1)
        let tag = write ? entry.pointee.writeTag : entry.pointee.readTag
        guard tag == page | accessKey else { return nil }
        return UnsafeMutableRawPointer(bitPattern: UInt(truncatingIfNeeded: linear &+ entry.pointee.hostDelta))
    }
}
