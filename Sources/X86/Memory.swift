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
    /// G in the final entry with CR4.PGE: a CR3 write keeps it.
    static let global: UInt8 = 16

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
    /// Tag bit of entries filled at CPL 0-2 under SMAP with EFLAGS.AC clear.
    static let smapKey: UInt64 = 1 << 61
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

    /// The linear address of `segment:offset`, unchecked (`checkedLinear`
    /// applies limits and the canonical rule).
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
        if state.efer & ControlBits.eferLMA != 0 {
            let top = Int64(bitPattern: address) >> 47
            guard top == 0 || top == -1 else {
                pending = .exception(vector: Vector.gp.rawValue, errorCode: 0)
                return nil
            }
        }
        let user = !implicitSupervisor && state.privilegeLevel() == 3
        if state.pagingGeneration != tlbGeneration { syncTLB() }
        let page = address >> 12
        let slot = Int(page & 0xFF)
        let cached = withUnsafeMutablePointer(to: &tlb) {
            UnsafeMutableRawPointer($0).assumingMemoryBound(to: TLBEntry.self)[slot]
        }
        if cached.tag == page && permitted(cached.flags, access, user: user) {
            return cached.frame | (address & 0xFFF)
        }
        return walk(address, access, user: user)
    }

    /// The page walk of the paging mode in force: 4-level (long mode), PAE
    /// (its PDPTEs cached at the CR3 load) or 32-bit (4 MiB pages with
    /// CR4.PSE, PSE-36 addresses). Checks each entry's reserved bits (#PF
    /// with RSVD), then R/W, U/S (CR0.WP), NX, SMEP and SMAP; only a walk
    /// that succeeds sets the A bits, and the D bit for a write (as KVM's
    /// walk_addr_generic does), and fills the TLB.
    mutating func walk(_ address: UInt64, _ access: Access, user: Bool) -> UInt64? {
        let long = state.efer & ControlBits.eferLMA != 0
        let pae = long || state.cr4 & ControlBits.cr4PAE != 0
        let nxe = pae && state.efer & ControlBits.eferNXE != 0
        var writable = true, userOK = true, executable = true
        var table: UInt64
        var shift: UInt64
        // Reserved in every entry: address bits above MAXPHYADDR, and NX without EFER.NXE.
        var reserved: UInt64 = 0
        if pae {
            reserved = long ? guestFeatures.reservedLong : guestFeatures.reservedPAE
            if !nxe { reserved |= 1 << 63 }
        }
        if long {
            table = state.cr3 & 0x000F_FFFF_FFFF_F000
            shift = 39
        } else if pae {
            if !state.pdptesLoaded {
                // State set from outside (KVM_SET_SREGS): load them now, as KVM does then.
                guard let entries = readPDPTEs(state.cr3, check: false) else { return nil }
                state.pdptes = entries
                state.pdptesLoaded = true
            }
            let pdpte: UInt64
            switch (address >> 30) & 3 {
            case 0: pdpte = state.pdptes.0
            case 1: pdpte = state.pdptes.1
            case 2: pdpte = state.pdptes.2
            default: pdpte = state.pdptes.3
            }
            if pdpte & 1 == 0 { return pageFault(address, access, present: false, user: user) }
            table = pdpte & 0x000F_FFFF_FFFF_F000
            shift = 21
        } else {
            table = state.cr3 & 0xFFFF_F000
            shift = 22
        }
        let entrySize = pae ? 8 : 4
        let indexMask: UInt64 = pae ? 0x1FF : 0x3FF
        let pse = state.cr4 & ControlBits.cr4PSE != 0
        // The entries whose A bit the walk sets once it succeeds (the last is the leaf).
        var unaccessed = InlineArray<4, UInt64>(repeating: 0)
        var unaccessedCount = 0
        var entryAddress: UInt64 = 0
        var entry: UInt64 = 0
        while true {
            entryAddress = table &+ ((address >> shift) & indexMask) &* UInt64(entrySize)
            guard let entryPointer = hostPointer(entryAddress, size: entrySize, write: false) else {
                pending = .emulationFailure(address: entryAddress)
                return nil
            }
            entry = pae ? entryPointer.loadUnaligned(as: UInt64.self) : UInt64(entryPointer.loadUnaligned(as: UInt32.self))
            if entry & 1 == 0 { return pageFault(address, access, present: false, user: user) }
            let ps = entry & 0x80 != 0
            // PS in a PDPTE (1 GiB) or PDE (2 MiB, or 4 MiB with CR4.PSE in 32-bit paging) ends the walk.
            let large: Bool
            var bad = entry & reserved
            if pae {
                large = ps && (shift == 30 || shift == 21)
                switch shift {
                case 39: bad |= entry & 0x80  // PS in a PML4E
                case 30 where ps: bad |= guestFeatures.gigabytePages ? entry & 0x3FFF_E000 : 0x80
                case 21 where ps: bad |= entry & 0x1F_E000
                default: break
                }
            } else {
                large = ps && shift == 22 && pse
                if large { bad |= entry & guestFeatures.reservedLargePDE32 }
            }
            if bad != 0 { return pageFault(address, access, present: true, user: user, reservedBit: true) }
            writable = writable && entry & 2 != 0
            userOK = userOK && entry & 4 != 0
            if nxe && entry & (1 << 63) != 0 { executable = false }
            if entry & 0x20 == 0 {
                unaccessed[unaccessedCount & 3] = entryAddress
                unaccessedCount += 1
            }
            if shift == 12 || large { break }
            table = pae ? entry & 0x000F_FFFF_FFFF_F000 : entry & 0xFFFF_F000
            shift -= pae ? 9 : 10
        }
        if user && !userOK { return pageFault(address, access, present: true, user: user) }
        if !user && userOK && !supervisorMayAccessUserPage(access) {
            return pageFault(address, access, present: true, user: user)
        }
        if access == .write && !writable && (user || state.cr0 & ControlBits.cr0WP != 0) {
            return pageFault(address, access, present: true, user: user)
        }
        if access == .fetch && !executable { return pageFault(address, access, present: true, user: user) }
        // A table in a read-only slot keeps its A and D bits clear, as a ROM would.
        for i in 0..<min(unaccessedCount, 4) where unaccessed[i] != entryAddress {
            setAccessed(at: unaccessed[i], size: entrySize)
        }
        let leafBits: UInt64 = access == .write ? 0x60 : 0x20
        if entry & leafBits != leafBits {
            entry |= leafBits
            storeEntry(entry, at: entryAddress, size: entrySize)
        }
        let pageMask: UInt64 = (1 << shift) - 1
        let physical: UInt64
        if pae {
            physical = (entry & 0x000F_FFFF_FFFF_F000 & ~pageMask) | (address & pageMask)
        } else if shift == 22 {
            // PSE-36: PDE bits 13-20 are physical address bits 32-39 (those above MAXPHYADDR are reserved).
            physical = (entry & 0xFFC0_0000) | ((entry >> 13) & 0xFF) << 32 | (address & pageMask)
        } else {
            physical = (entry & 0xFFFF_F000) | (address & pageMask)
        }
        var flags: UInt8 = 0
        if writable { flags |= TLBEntry.writable }
        if userOK { flags |= TLBEntry.user }
        if executable { flags |= TLBEntry.executable }
        if entry & 0x40 != 0 { flags |= TLBEntry.dirty }
        if entry & 0x100 != 0 && state.cr4 & ControlBits.cr4PGE != 0 { flags |= TLBEntry.global }
        let page = address >> 12
        let fill = TLBEntry(tag: page, frame: physical & ~0xFFF, flags: flags)
        withUnsafeMutablePointer(to: &tlb) {
            UnsafeMutableRawPointer($0).assumingMemoryBound(to: TLBEntry.self)[Int(page & 0xFF)] = fill
        }
        return physical
    }

    /// Sets the A bit of the paging-structure entry at `address`, leaving the rest as it is now.
    mutating func setAccessed(at address: UInt64, size: Int) {
        guard let pointer = hostPointer(address, size: size, write: true) else { return }
        if size == 8 {
            pointer.storeBytes(of: pointer.loadUnaligned(as: UInt64.self) | 0x20, as: UInt64.self)
        } else {
            pointer.storeBytes(of: pointer.loadUnaligned(as: UInt32.self) | 0x20, as: UInt32.self)
        }
    }

    mutating func storeEntry(_ entry: UInt64, at address: UInt64, size: Int) {
        guard let pointer = hostPointer(address, size: size, write: true) else { return }
        if size == 8 {
            pointer.storeBytes(of: entry, as: UInt64.self)
        } else {
            pointer.storeBytes(of: UInt32(truncatingIfNeeded: entry), as: UInt32.self)
        }
    }

    /// The four PDPTEs of the PAE table CR3 points at. With `check`, a
    /// present one with reserved bits set is #GP(0), as MOV to CR0, CR3
    /// or CR4 gives when it loads them.
    mutating func readPDPTEs(_ cr3: UInt64, check: Bool) -> (UInt64, UInt64, UInt64, UInt64)? {
        let base = cr3 & 0xFFFF_FFE0
        guard let pointer = hostPointer(base, size: 32, write: false) else {
            pending = .emulationFailure(address: base)
            return nil
        }
        let entries = (pointer.loadUnaligned(as: UInt64.self), pointer.loadUnaligned(fromByteOffset: 8, as: UInt64.self),
                       pointer.loadUnaligned(fromByteOffset: 16, as: UInt64.self),
                       pointer.loadUnaligned(fromByteOffset: 24, as: UInt64.self))
        if check {
            // Bits 1-2 and 5-8 and those above MAXPHYADDR (bit 63 included) are reserved.
            let reserved: UInt64 = 0x1E6 | guestFeatures.reservedPAE | 1 << 63
            for entry in [entries.0, entries.1, entries.2, entries.3] where entry & 1 != 0 && entry & reserved != 0 {
                pending = .exception(vector: Vector.gp.rawValue, errorCode: 0)
                return nil
            }
        }
        return entries
    }

    /// Whether a TLB hit may be used; anything else takes the walk, which
    /// raises the fault (or sets the D bit).
    @inline(__always)
    mutating func permitted(_ flags: UInt8, _ access: Access, user: Bool) -> Bool {
        if user {
            if flags & TLBEntry.user == 0 { return false }
        } else if flags & supervisorUserGuard != 0 {
            return false
        }
        switch access {
        case .read: return true
        case .fetch: return flags & TLBEntry.executable != 0
        case .write:
            if flags & TLBEntry.dirty == 0 { return false }
            return flags & TLBEntry.writable != 0 || (!user && state.cr0 & ControlBits.cr0WP == 0)
        }
    }

    /// Catches the TLB up with CR writes: everything goes after a CR0, CR4
    /// or EFER write, all but global pages after a CR3 write.
    mutating func syncTLB() {
        let all = state.fullFlushGeneration != tlbFullGeneration
        withUnsafeMutablePointer(to: &tlb) {
            let entries = UnsafeMutableRawPointer($0).assumingMemoryBound(to: TLBEntry.self)
            for i in 0..<256 where all || entries[i].flags & TLBEntry.global == 0 { entries[i].tag = ~0 }
        }
        tlbGeneration = state.pagingGeneration
        tlbFullGeneration = state.fullFlushGeneration
        supervisorUserGuard = state.cr4 & (ControlBits.cr4SMEP | ControlBits.cr4SMAP) != 0 ? TLBEntry.user : 0
    }

    mutating func flushTLB() {
        withUnsafeMutablePointer(to: &tlb) {
            let entries = UnsafeMutableRawPointer($0).assumingMemoryBound(to: TLBEntry.self)
            for i in 0..<256 { entries[i].tag = ~0 }
        }
        tlbGeneration = state.pagingGeneration
        tlbFullGeneration = state.fullFlushGeneration
        supervisorUserGuard = state.cr4 & (ControlBits.cr4SMEP | ControlBits.cr4SMAP) != 0 ? TLBEntry.user : 0
    }

    /// INVLPG's effect (global pages too), for the host and for the instruction.
    public mutating func invalidatePage(_ linearAddress: UInt64) {
        let page = linearAddress >> 12
        decoded.hostTLB[Int(truncatingIfNeeded: page) & (HostTLBEntry.count - 1)] = HostTLBEntry()
        withUnsafeMutablePointer(to: &tlb) {
            let entries = UnsafeMutableRawPointer($0).assumingMemoryBound(to: TLBEntry.self)
            if entries[Int(page & 0xFF)].tag == page { entries[Int(page & 0xFF)].tag = ~0 }
        }
    }

    /// Stores #PF with its error code: P, W/R, U/S (the access's, so a
    /// supervisor access from CPL 3 has it clear), RSVD for a reserved bit
    /// set in an entry, I/D for a fetch when SMEP or NX paging is on.
    mutating func pageFault(_ address: UInt64, _ access: Access, present: Bool, user: Bool,
                            reservedBit: Bool = false) -> UInt64? {
        var code: UInt32 = present ? PageFaultCode.present : 0
        if access == .write { code |= PageFaultCode.write }
        if user { code |= PageFaultCode.user }
        if reservedBit { code |= PageFaultCode.reserved }
        let pae = state.efer & ControlBits.eferLMA != 0 || state.cr4 & ControlBits.cr4PAE != 0
        if access == .fetch && ((pae && state.efer & ControlBits.eferNXE != 0) || state.cr4 & ControlBits.cr4SMEP != 0) {
            code |= PageFaultCode.fetch
        }
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
        PhysicalRange.markDirty(bitmap, page: first)
        if last != first { PhysicalRange.markDirty(bitmap, page: last) }
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
        if state.privilegeLevel() == 3 {
            accessKey = HostTLBEntry.userKey
        } else if state.cr4 & ControlBits.cr4SMAP != 0 && state.flags.bits & RFLAGS.ac == 0 {
            // SMAP in force: the user pages filled while AC was set (STAC,
            // POPF: barriers, which come back here) are not reachable.
            accessKey = HostTLBEntry.smapKey
        } else {
            accessKey = 0
        }
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
        if access != .fetch {
            let entry = decoded.hostTLB + Int(truncatingIfNeeded: page) & (HostTLBEntry.count - 1)
            // A read with write intent may use a writable entry: the write's checks passed for it.
            let tag = access == .read ? entry.pointee.readTag : entry.pointee.writeTag
            if tag == page | accessKey && (address & 0xFFF) &+ UInt64(truncatingIfNeeded: size) <= 0x1000,
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
        guard let address = checkedLinear(segment, offset, size: size, write: false) else { return nil }
        if debugUnit.dataBreakpoints != 0 { noteDataAccess(address, size: size, write: false) }
        return readLinear(address, size: size)
    }

    @inline(always)
    mutating func write(_ segment: Int, _ offset: UInt64, _ value: UInt64, size: Int) -> Bool {
        guard let address = checkedLinear(segment, offset, size: size, write: true) else { return false }
        if debugUnit.dataBreakpoints != 0 { noteDataAccess(address, size: size, write: true) }
        return writeLinear(address, value, size: size)
    }

    /// The read of a read-modify-write operand, with the write's checks: a
    /// segment that is not writable, or a read-only or absent page, faults
    /// (W in the error code) before the instruction changes anything. A data
    /// breakpoint sees the write that follows.
    @inline(always)
    mutating func readForUpdate(_ segment: Int, _ offset: UInt64, size: Int) -> UInt64? {
        guard let address = checkedLinear(segment, offset, size: size, write: true) else { return nil }
        return readLinear(address, size: size, .write)
    }

    // The accesses of the decoded cache's own handlers. Blocks run only
    // while the debug unit is not armed (see `run`), so no data breakpoint
    // is in force there and the per-access test of `read` and `write` is left out.

    @inline(always)
    mutating func cachedRead(_ segment: Int, _ offset: UInt64, size: Int) -> UInt64? {
        guard let address = checkedLinear(segment, offset, size: size, write: false) else { return nil }
        return readLinear(address, size: size)
    }

    @inline(always)
    mutating func cachedReadForUpdate(_ segment: Int, _ offset: UInt64, size: Int) -> UInt64? {
        readForUpdate(segment, offset, size: size)
    }

    @inline(always)
    mutating func cachedWrite(_ segment: Int, _ offset: UInt64, _ value: UInt64, size: Int) -> Bool {
        guard let address = checkedLinear(segment, offset, size: size, write: true) else { return false }
        return writeLinear(address, value, size: size)
    }
}
