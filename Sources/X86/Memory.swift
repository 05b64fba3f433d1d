// Segmentation, paging and guest-physical access. Every access is checked
// against the RAM size: what is outside becomes an MMIO exit, never a host
// access outside the buffer.

enum Access {
    case read, write, fetch
}

/// A cached translation of one 4 KiB linear page, with the permissions the
/// walk accumulated, so that a hit applies the same checks as the walk.
struct TLBEntry {
    static let writable: UInt8 = 1
    static let user: UInt8 = 2
    static let executable: UInt8 = 4
    /// The D bit is set in the final entry: writes need no walk to set it.
    static let dirty: UInt8 = 8

    /// The linear page number, or ~0 when empty.
    var tag: UInt64 = ~0
    var frame: UInt64 = 0
    var flags: UInt8 = 0
}

/// A linear page of RAM that loads and stores reach with one compare and
/// one add (the fast path of `readLinear` and `writeLinear`): filled after a
/// translation succeeded, tagged with the linear page number and the CPL it
/// was checked at. It lives as long as the TLB entry would (a paging
/// generation, INVLPG) and as the memory ranges; pages with a dirty log, in
/// a read-only range or holding code this CPU has decoded are never writable
/// here, so that their stores take the slow path that logs or notes them.
struct HostTLBEntry {
    static let count = 256
    /// Tag bit of entries filled at CPL 3.
    static let userKey: UInt64 = 1 << 63
    /// An `accessKey` that no tag holds (page numbers stay below 2^52).
    static let invalidKey: UInt64 = 1 << 62
    static let pageMask: UInt64 = (1 << 52) - 1

    var readTag: UInt64 = ~0
    var writeTag: UInt64 = ~0
    /// The host address minus the linear address.
    var hostDelta: UInt64 = 0
    /// The guest-physical address minus the linear address.
    var physicalDelta: UInt64 = 0
}

extension X86CPU {
    // MARK: Segmentation

    /// The linear address of `segment:offset`. Segment limits are not
    /// checked yet.
    @inline(always)
    mutating func linear(_ segment: Int, _ offset: UInt64) -> UInt64 {
        if case .long64 = state.mode {
            // 64-bit mode: only FS and GS have a base.
            return segment >= SegmentRegisterName.fs.rawValue ? state.segmentBase(segment) &+ offset : offset
        }
        return (state.segmentBase(segment) &+ offset) & 0xFFFF_FFFF
    }

    // MARK: Paging

    /// Translates a linear address, or stores the fault and returns nil.
    mutating func translate(_ address: UInt64, _ access: Access) -> UInt64? {
        if state.cr0 & ControlBits.cr0PG == 0 { return address }
        guard state.efer & ControlBits.eferLMA != 0 else {
            // 32-bit and PAE paging outside long mode come later.
            pending = .emulationFailure(address: address)
            return nil
        }
        let top = Int64(bitPattern: address) >> 47
        guard top == 0 || top == -1 else {
            pending = .exception(vector: Vector.gp.rawValue, errorCode: 0)
            return nil
        }
        let user = state.privilegeLevel() == 3
        if state.pagingGeneration != tlbGeneration { flushTLB() }
        let page = address >> 12
        let slot = Int(page & 0xFF)
        let cached = withUnsafeMutablePointer(to: &tlb) {
            UnsafeMutableRawPointer($0).assumingMemoryBound(to: TLBEntry.self)[slot]
        }
        if cached.tag == page && permitted(cached.flags, access, user: user) {
            return cached.frame | (address & 0xFFF)
        }
        let nxe = state.efer & ControlBits.eferNXE != 0
        var table = state.cr3 & 0x000F_FFFF_FFFF_F000
        var writable = true, userOK = true, executable = true
        var shift: UInt64 = 39
        var entryAddress: UInt64 = 0
        var entry: UInt64 = 0
        while true {
            entryAddress = table + ((address >> shift) & 0x1FF) * 8
            guard let entryPointer = hostPointer(entryAddress, size: 8, write: false) else {
                pending = .emulationFailure(address: entryAddress)
                return nil
            }
            entry = entryPointer.loadUnaligned(as: UInt64.self)
            if entry & 1 == 0 { return pageFault(address, access, present: false) }
            writable = writable && entry & 2 != 0
            userOK = userOK && entry & 4 != 0
            if nxe && entry & (1 << 63) != 0 { executable = false }
            if entry & 0x20 == 0 {
                entry |= 0x20
                // A table in a read-only slot keeps its A bit clear, as a ROM would.
                hostPointer(entryAddress, size: 8, write: true)?.storeBytes(of: entry, as: UInt64.self)
            }
            // PS in a PDPTE (1 GiB) or PDE (2 MiB) ends the walk.
            if shift == 12 || ((shift == 30 || shift == 21) && entry & 0x80 != 0) { break }
            table = entry & 0x000F_FFFF_FFFF_F000
            shift -= 9
        }
        if user && !userOK { return pageFault(address, access, present: true) }
        if access == .write && !writable && (user || state.cr0 & ControlBits.cr0WP != 0) {
            return pageFault(address, access, present: true)
        }
        if access == .fetch && !executable { return pageFault(address, access, present: true) }
        if access == .write && entry & 0x40 == 0 {
            hostPointer(entryAddress, size: 8, write: true)?.storeBytes(of: entry | 0x40, as: UInt64.self)
        }
        let pageMask: UInt64 = (1 << shift) - 1
        let physical = (entry & 0x000F_FFFF_FFFF_F000 & ~pageMask) | (address & pageMask)
        var flags: UInt8 = 0
        if writable { flags |= TLBEntry.writable }
        if userOK { flags |= TLBEntry.user }
        if executable { flags |= TLBEntry.executable }
        if access == .write || entry & 0x40 != 0 { flags |= TLBEntry.dirty }
        let fill = TLBEntry(tag: page, frame: physical & ~0xFFF, flags: flags)
        withUnsafeMutablePointer(to: &tlb) {
            UnsafeMutableRawPointer($0).assumingMemoryBound(to: TLBEntry.self)[slot] = fill
        }
        return physical
    }

    /// Whether a TLB hit may be used; anything else takes the walk, which
    /// raises the fault (or sets the D bit).
    @inline(__always)
    mutating func permitted(_ flags: UInt8, _ access: Access, user: Bool) -> Bool {
        if user && flags & TLBEntry.user == 0 { return false }
        switch access {
        case .read: return true
        case .fetch: return flags & TLBEntry.executable != 0
        case .write:
            if flags & TLBEntry.dirty == 0 { return false }
            return flags & TLBEntry.writable != 0 || (!user && state.cr0 & ControlBits.cr0WP == 0)
        }
    }

    mutating func flushTLB() {
        withUnsafeMutablePointer(to: &tlb) {
            let entries = UnsafeMutableRawPointer($0).assumingMemoryBound(to: TLBEntry.self)
            for i in 0..<256 { entries[i].tag = ~0 }
        }
        tlbGeneration = state.pagingGeneration
    }

    /// INVLPG's effect, for the host and for the instruction when it exists.
    public mutating func invalidatePage(_ linearAddress: UInt64) {
        let page = linearAddress >> 12
        decoded.hostTLB[Int(truncatingIfNeeded: page) & (HostTLBEntry.count - 1)] = HostTLBEntry()
        withUnsafeMutablePointer(to: &tlb) {
            let entries = UnsafeMutableRawPointer($0).assumingMemoryBound(to: TLBEntry.self)
            if entries[Int(page & 0xFF)].tag == page { entries[Int(page & 0xFF)].tag = ~0 }
        }
    }

    mutating func pageFault(_ address: UInt64, _ access: Access, present: Bool) -> UInt64? {
        var code: UInt32 = present ? 1 : 0
        if access == .write { code |= 2 }
        if state.privilegeLevel() == 3 { code |= 4 }
        if access == .fetch && state.efer & ControlBits.eferNXE != 0 { code |= 0x10 }
        state.cr2 = address
        pending = .exception(vector: Vector.pf.rawValue, errorCode: code)
        return nil
    }

    // MARK: Physical access

    /// The host address of `size` bytes at guest-physical `address`, or nil
    /// when they are not all in one range (or, for a write, in a read-only
    /// one). A write marks its pages in the range's dirty log.
    @inline(__always)
    mutating func hostPointer(_ address: UInt64, size: Int, write: Bool) -> UnsafeMutableRawPointer? {
        // Every guest write comes here for its pointer (see DecodedCache.swift).
        if write { noteCodeWrite(address, size: size) }
        let hot = write ? hotWrite : hotRead
        let offset = address &- hot.start
        if offset < hot.size && hot.size - offset >= UInt64(size), let host = hot.host {
            if write, let bitmap = hot.dirtyBitmap { markDirty(bitmap, offset, size) }
            return host + Int(offset)
        }
        return hostPointerSlow(address, size: size, write: write)
    }

    mutating func hostPointerSlow(_ address: UInt64, size: Int, write: Bool) -> UnsafeMutableRawPointer? {
        guard let range = memory.range(containing: address) else { return nil }
        let offset = address - range.guestAddress
        guard range.size - offset >= UInt64(size), !(write && range.readOnly) else { return nil }
        let hot = HotRange(start: range.guestAddress, size: range.size, host: range.host, dirtyBitmap: range.dirtyBitmap)
        if write {
            hotWrite = hot
            if let bitmap = range.dirtyBitmap { markDirty(bitmap, offset, size) }
        } else {
            hotRead = hot
        }
        return range.host + Int(offset)
    }

    /// Marks the first and last page of an access (at most two: accesses
    /// are split at page boundaries before they get here).
    @inline(__always)
    func markDirty(_ bitmap: UnsafeMutablePointer<UInt64>, _ offset: UInt64, _ size: Int) {
        let first = offset >> 12
        let last = (offset &+ UInt64(size) &- 1) >> 12
        bitmap[Int(first >> 6)] |= 1 << (first & 63)
        if last != first { bitmap[Int(last >> 6)] |= 1 << (last & 63) }
    }

    @inline(__always)
    mutating func readPhysical(_ address: UInt64, size: Int) -> UInt64? {
        if let host = hostPointer(address, size: size, write: false) {
            switch size {
            case 1: return UInt64(host.load(as: UInt8.self))
            case 2: return UInt64(host.loadUnaligned(as: UInt16.self))
            case 4: return UInt64(host.loadUnaligned(as: UInt32.self))
            case 8: return host.loadUnaligned(as: UInt64.self)
            default:  // the piece of an access split at a page boundary
                var value: UInt64 = 0
                for i in 0..<size {
                    value |= UInt64(host.load(fromByteOffset: i, as: UInt8.self)) << UInt64(i * 8)
                }
                return value
            }
        }
        if let answer = mmioReadAnswer, answer.address == address {
            mmioReadAnswer = nil
            return answer.value & sizeMask(size)
        }
        pending = .mmio(MMIOExit(address: address, size: size, isWrite: false, data: 0))
        return nil
    }

    @inline(__always)
    mutating func writePhysical(_ address: UInt64, _ value: UInt64, size: Int) {
        if let host = hostPointer(address, size: size, write: true) {
            switch size {
            case 1: host.storeBytes(of: UInt8(truncatingIfNeeded: value), as: UInt8.self)
            case 2: host.storeBytes(of: UInt16(truncatingIfNeeded: value), as: UInt16.self)
            case 4: host.storeBytes(of: UInt32(truncatingIfNeeded: value), as: UInt32.self)
            case 8: host.storeBytes(of: value, as: UInt64.self)
            default:
                for i in 0..<size {
                    host.storeBytes(of: UInt8(truncatingIfNeeded: value >> UInt64(i * 8)), toByteOffset: i, as: UInt8.self)
                }
            }
            return
        }
        pending = .mmio(MMIOExit(address: address, size: size, isWrite: true, data: value & sizeMask(size)))
        mmioWritePending = true
        blockInterrupted = true
    }

    // MARK: The host TLB

    /// At a context point (see `invalidateContext`): drops the host TLB if
    /// paging changed since it was filled, and takes the CPL's key.
    mutating func refreshHostTLB() {
        if hostTLBGeneration != state.pagingGeneration {
            for i in 0..<HostTLBEntry.count { decoded.hostTLB[i] = HostTLBEntry() }
            hostTLBGeneration = state.pagingGeneration
        }
        accessKey = state.privilegeLevel() == 3 ? HostTLBEntry.userKey : 0
    }

    /// Enters the page of a translated access into the host TLB, when the
    /// whole page is RAM the access could use (writable and not logged, for
    /// a write).
    mutating func fillHostTLB(linear: UInt64, physical: UInt64, write: Bool) {
        guard accessKey != HostTLBEntry.invalidKey, hostTLBGeneration == state.pagingGeneration else { return }
        let hostTLB = decoded.hostTLB
        let frame = physical & ~0xFFF
        guard let range = memory.range(containing: frame), range.size - (frame - range.guestAddress) >= 0x1000 else { return }
        // Stores to a page of code take the slow path, which notes them (see DecodedCache.swift).
        let writable = !range.readOnly && range.dirtyBitmap == nil && !isCodePage(frame)
        if write && !writable { return }
        let page = linear >> 12
        let tag = page | accessKey
        let host = UInt64(UInt(bitPattern: range.host + Int(frame - range.guestAddress)))
        let hostDelta = host &- (page << 12)
        let entry = hostTLB + Int(truncatingIfNeeded: page) & (HostTLBEntry.count - 1)
        // A read keeps the entry's write permission for the same page.
        let keepsWrite = entry.pointee.writeTag == tag && entry.pointee.hostDelta == hostDelta
        entry.pointee = HostTLBEntry(readTag: tag, writeTag: write || keepsWrite ? tag : ~0, hostDelta: hostDelta,
                                     physicalDelta: frame &- (page << 12))
    }

    // MARK: Linear and logical access

    /// A load at a linear address: one compare in the host TLB, else the
    /// walk and the physical access.
    @inline(always)
    mutating func readLinear(_ address: UInt64, size: Int, _ access: Access = .read) -> UInt64? {
        let page = address >> 12
        if access == .read {
            let entry = decoded.hostTLB + Int(truncatingIfNeeded: page) & (HostTLBEntry.count - 1)
            if entry.pointee.readTag == page | accessKey && (address & 0xFFF) &+ UInt64(truncatingIfNeeded: size) <= 0x1000,
               let host = UnsafeRawPointer(bitPattern: UInt(truncatingIfNeeded: address &+ entry.pointee.hostDelta)) {
                switch size {
                case 1: return UInt64(host.load(as: UInt8.self))
                case 2: return UInt64(host.loadUnaligned(as: UInt16.self))
                case 4: return UInt64(host.loadUnaligned(as: UInt32.self))
                case 8: return host.loadUnaligned(as: UInt64.self)
                default: break
                }
            }
        }
        return readLinearSlow(address, size: size, access)
    }

    /// A store at a linear address: one compare in the host TLB, else the
    /// walk and the physical access.
    @inline(always)
    mutating func writeLinear(_ address: UInt64, _ value: UInt64, size: Int) -> Bool {
        let page = address >> 12
        let entry = decoded.hostTLB + Int(truncatingIfNeeded: page) & (HostTLBEntry.count - 1)
        if entry.pointee.writeTag == page | accessKey && (address & 0xFFF) &+ UInt64(truncatingIfNeeded: size) <= 0x1000,
           let host = UnsafeMutableRawPointer(bitPattern: UInt(truncatingIfNeeded: address &+ entry.pointee.hostDelta)) {
            switch size {
            case 1: host.storeBytes(of: UInt8(truncatingIfNeeded: value), as: UInt8.self)
            case 2: host.storeBytes(of: UInt16(truncatingIfNeeded: value), as: UInt16.self)
            case 4: host.storeBytes(of: UInt32(truncatingIfNeeded: value), as: UInt32.self)
            case 8: host.storeBytes(of: value, as: UInt64.self)
            default: return writeLinearSlow(address, value, size: size)
            }
            return true
        }
        return writeLinearSlow(address, value, size: size)
    }

    mutating func readLinearSlow(_ address: UInt64, size: Int, _ access: Access) -> UInt64? {
        if (address & 0xFFF) + UInt64(size) <= 0x1000 {
            guard let physical = translate(address, access) else { return nil }
            guard let value = readPhysical(physical, size: size) else { return nil }
            if access == .read { fillHostTLB(linear: address, physical: physical, write: false) }
            return value
        }
        // Crosses a page: two pieces, split where the kernel's emulator splits
        // them, so that RAM and MMIO halves are each reported as such.
        let first = Int(0x1000 - (address & 0xFFF))
        guard let low = translate(address, access),
              let high = translate(address &+ UInt64(first), access),
              let lowValue = readPhysical(low, size: first),
              let highValue = readPhysical(high, size: size - first) else { return nil }
        return lowValue | (highValue << UInt64(first * 8))
    }

    mutating func writeLinearSlow(_ address: UInt64, _ value: UInt64, size: Int) -> Bool {
        if (address & 0xFFF) + UInt64(size) <= 0x1000 {
            guard let physical = translate(address, .write) else { return false }
            writePhysical(physical, value, size: size)
            if !mmioWritePending { fillHostTLB(linear: address, physical: physical, write: true) }
            return true
        }
        // Translate both pages before writing, so that a fault writes nothing.
        let first = Int(0x1000 - (address & 0xFFF))
        guard let low = translate(address, .write), let high = translate(address &+ UInt64(first), .write) else {
            return false
        }
        writePhysical(low, value, size: first)
        writePhysical(high, value >> UInt64(first * 8), size: size - first)
        return true
    }

    @inline(always)
    mutating func read(_ segment: Int, _ offset: UInt64, size: Int) -> UInt64? {
        readLinear(linear(segment, offset), size: size)
    }

    @inline(always)
    mutating func write(_ segment: Int, _ offset: UInt64, _ value: UInt64, size: Int) -> Bool {
        writeLinear(linear(segment, offset), value, size: size)
    }
}
