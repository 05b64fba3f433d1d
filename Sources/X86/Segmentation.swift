// Segmentation: descriptors from the GDT and LDT, the checks of segment
// register loads, the limit and type checks of accesses outside 64-bit mode
// (the canonical check inside it), and accesses to system tables, which are
// supervisor accesses whatever the CPL.

/// A segment or gate descriptor as the GDT, LDT or IDT holds it.
struct Descriptor {
    var low: UInt64
    /// Bytes 8-15 of a 16-byte descriptor (system descriptors and gates in
    /// long mode); 0 for an 8-byte one.
    var high: UInt64 = 0

    /// Type, S, DPL, P, AVL, L, D/B, G: the VMX access-rights layout SegmentRegister keeps.
    var attributes: UInt16 { UInt16(truncatingIfNeeded: (low >> 40) & 0xF0FF) }
    var type: UInt8 { UInt8(truncatingIfNeeded: (low >> 40) & 0xF) }
    var isSystem: Bool { low & (1 << 44) == 0 }
    var dpl: UInt8 { UInt8(truncatingIfNeeded: (low >> 45) & 3) }
    var isPresent: Bool { low & (1 << 47) != 0 }
    var isCode: Bool { !isSystem && type & 8 != 0 }
    var isConforming: Bool { isCode && type & 4 != 0 }
    /// Data, or readable code.
    var isReadable: Bool { !isSystem && (type & 8 == 0 || type & 2 != 0) }
    var isWritableData: Bool { !isSystem && type & 0xA == 2 }
    var isLong: Bool { low & (1 << 53) != 0 }
    var isDefaultBig: Bool { low & (1 << 54) != 0 }
    /// The limit in bytes (G scales it by 4 KiB).
    var limit: UInt32 {
        let raw = UInt32(truncatingIfNeeded: (low & 0xFFFF) | ((low >> 32) & 0xF_0000))
        return low & (1 << 55) != 0 ? (raw << 12) | 0xFFF : raw
    }
    var base: UInt64 { ((low >> 16) & 0xFF_FFFF) | ((low >> 32) & 0xFF00_0000) | (high & 0xFFFF_FFFF) << 32 }

    /// A gate's target selector, offset (all 64 bits for a long-mode gate)
    /// and, for a call gate, its parameter count.
    var gateSelector: UInt16 { UInt16(truncatingIfNeeded: low >> 16) }
    var gateOffset: UInt64 { (low & 0xFFFF) | ((low >> 32) & 0xFFFF_0000) | (high & 0xFFFF_FFFF) << 32 }
    var gateParameterCount: Int { Int((low >> 32) & 0x1F) }

    func segment(selector: UInt16) -> SegmentRegister {
        SegmentRegister(selector: selector, base: base, limit: limit, attributes: attributes)
    }
}

extension X86CPU {
    // MARK: System-table accesses

    /// A read of the GDT, LDT, IDT or TSS: a supervisor access at any CPL.
    mutating func readSystem(_ address: UInt64, size: Int) -> UInt64? {
        let saved = (implicitSupervisor, systemTableAccess)
        implicitSupervisor = true
        systemTableAccess = true
        defer { (implicitSupervisor, systemTableAccess) = saved }
        return readLinear(systemAddress(address), size: size)
    }

    mutating func writeSystem(_ address: UInt64, _ value: UInt64, size: Int) -> Bool {
        let saved = (implicitSupervisor, systemTableAccess)
        implicitSupervisor = true
        systemTableAccess = true
        defer { (implicitSupervisor, systemTableAccess) = saved }
        return writeLinear(systemAddress(address), value, size: size)
    }

    /// Table addresses wrap at 4 GiB outside long mode.
    @inline(__always)
    mutating func systemAddress(_ address: UInt64) -> UInt64 {
        state.efer & ControlBits.eferLMA != 0 ? address : address & 0xFFFF_FFFF
    }

    /// The descriptor `selector` names in the GDT or LDT, and its address;
    /// `vector` with the selector (and `ext`) as error code when it lies
    /// beyond its table, or names an LDT that is not usable. `wide` reads
    /// the 16 bytes of a long-mode system descriptor.
    mutating func readDescriptor(_ selector: UInt16, vector: Vector = .gp, ext: UInt32 = 0,
                                 wide: Bool = false) -> (Descriptor, UInt64)? {
        let errorCode = UInt32(selector & 0xFFFC) | ext
        let base: UInt64
        let limit: UInt64
        if selector & 4 != 0 {
            guard state.ldtr.isPresent else {
                _ = fault(vector, errorCode: errorCode)
                return nil
            }
            base = state.ldtr.base
            limit = UInt64(state.ldtr.limit)
        } else {
            base = state.gdtr.base
            limit = UInt64(state.gdtr.limit)
        }
        let offset = UInt64(selector & 0xFFF8)
        guard offset + (wide ? 15 : 7) <= limit else {
            _ = fault(vector, errorCode: errorCode)
            return nil
        }
        guard let low = readSystem(base &+ offset, size: 8) else { return nil }
        var descriptor = Descriptor(low: low)
        if wide {
            guard let high = readSystem(base &+ offset &+ 8, size: 8) else { return nil }
            descriptor.high = high
        }
        return (descriptor, base &+ offset)
    }

    /// Sets the accessed bit of a code or data descriptor in its table, as
    /// loading it does.
    mutating func markAccessed(_ descriptor: inout Descriptor, at address: UInt64) -> Bool {
        guard descriptor.low & (1 << 40) == 0 else { return true }
        descriptor.low |= 1 << 40
        return writeSystem(address &+ 5, (descriptor.low >> 40) & 0xFF, size: 1)
    }

    /// A null selector's segment: unusable. SS keeps the CPL as its DPL (a
    /// null SS exists only in 64-bit mode, at CPL 0-2).
    static func nullSegment(_ selector: UInt16, dpl: UInt8 = 0) -> SegmentRegister {
        SegmentRegister(selector: selector, base: 0, limit: 0, attributes: UInt16(dpl) << 5)
    }

    // MARK: MOV Sreg, POP Sreg, LDS...

    /// Loads ES, SS, DS, FS or GS with the checks of MOV and POP (SDM MOV):
    /// #GP(selector) for a selector beyond its table, a segment of the
    /// wrong type or privilege, #NP (#SS for SS) for one not present; a
    /// null selector makes DS-GS unusable and is #GP(0) for SS (but in
    /// 64-bit mode at CPL < 3 with RPL = CPL).
    mutating func loadDataSegment(_ segment: Int, selector: UInt16) -> Bool {
        if state.cr0 & ControlBits.cr0PE == 0 || state.flags.bits & RFLAGS.vm != 0 {
            // A 64 KiB read/write segment, as KVM's emulator loads it (the
            // CPU itself would keep the cached limit: unreal mode); DPL 3
            // in virtual-8086 mode.
            state[segmentIndex: segment] = realStyleSegment(selector, code: false)
            return true
        }
        let isStack = segment == SegmentRegisterName.ss.rawValue
        let cpl = state.privilegeLevel()
        let rpl = UInt8(selector & 3)
        if selector & 0xFFFC == 0 {
            if isStack {
                guard state.mode == .long64 && cpl != 3 && rpl == cpl else { return fault(.gp, errorCode: 0) }
                state.ss = Self.nullSegment(selector, dpl: cpl)
            } else {
                // Intel clears the base too; 64-bit code reloads FS/GS bases through MSRs.
                state[segmentIndex: segment] = Self.nullSegment(selector)
            }
            return true
        }
        let errorCode = UInt32(selector & 0xFFFC)
        guard let (found, address) = readDescriptor(selector) else { return false }
        var descriptor = found
        if isStack {
            guard rpl == cpl, descriptor.isWritableData, descriptor.dpl == cpl else { return fault(.gp, errorCode: errorCode) }
            guard descriptor.isPresent else { return fault(.ss, errorCode: errorCode) }
        } else {
            guard descriptor.isReadable else { return fault(.gp, errorCode: errorCode) }
            if !descriptor.isConforming && (rpl > descriptor.dpl || cpl > descriptor.dpl) {
                return fault(.gp, errorCode: errorCode)
            }
            guard descriptor.isPresent else { return fault(.np, errorCode: errorCode) }
        }
        guard markAccessed(&descriptor, at: address) else { return false }
        state[segmentIndex: segment] = descriptor.segment(selector: selector)
        return true
    }

    /// After a return to an outer privilege level (RETF, IRET, SYSEXIT is
    /// not one): ES, DS, FS and GS holding data or non-conforming code
    /// more privileged than the new CPL become null (SDM RET, IRET).
    mutating func invalidateDataSegments(newCPL: UInt8) {
        for index in [0, 3, 4, 5] {
            let segment = state[segmentIndex: index]
            let a = segment.attributes
            guard a & 0x80 != 0 else { continue }
            let conformingCode = a & 0x1C == 0x1C
            if !conformingCode && segment.dpl < newCPL {
                var invalid = segment
                invalid.selector = 0
                invalid.attributes = 0
                state[segmentIndex: index] = invalid
            }
        }
    }

    // MARK: Access checks

    /// The linear address of `size` bytes at `segment:offset`, after the
    /// checks of the mode: canonical in 64-bit mode, the segment's
    /// usability, type and limit (expand-down too) elsewhere; #SS(0) for
    /// the stack segment and #GP(0) for the others when they fail.
    @inline(__always)
    mutating func checkedLinear(_ segment: Int, _ offset: UInt64, size: Int, write: Bool) -> UInt64? {
        if case .long64 = state.mode {
            let address = segment >= SegmentRegisterName.fs.rawValue ? state.segmentBase(segment) &+ offset : offset
            let top = Int64(bitPattern: address) >> 47
            if top == 0 || top == -1 { return address }
            _ = fault(segment == SegmentRegisterName.ss.rawValue ? .ss : .gp, errorCode: 0)
            return nil
        }
        // The common flat case: a present, expand-up, writable data segment of 4 GiB.
        let s = state[segmentIndex: segment]
        if s.limit == 0xFFFF_FFFF && s.attributes & 0x9E == 0x92 && offset &+ UInt64(size) <= 0x1_0000_0000 {
            return (s.base &+ offset) & 0xFFFF_FFFF
        }
        return legacyLinear(segment, offset, size: size, write: write)
    }

    @inline(never)
    mutating func legacyLinear(_ segment: Int, _ offset: UInt64, size: Int, write: Bool) -> UInt64? {
        let s = state[segmentIndex: segment]
        if segmentAllows(s, offset, size: size, write: write) { return (s.base &+ offset) & 0xFFFF_FFFF }
        _ = fault(segment == SegmentRegisterName.ss.rawValue ? .ss : .gp, errorCode: 0)
        return nil
    }

    /// Whether `size` bytes at `offset` are inside `s` and its type allows
    /// the access (real mode checks the limit and writability too, as the
    /// CPU and KVM's emulator do, but has no usability).
    mutating func segmentAllows(_ s: SegmentRegister, _ offset: UInt64, size: Int, write: Bool) -> Bool {
        let a = s.attributes
        let real = state.cr0 & ControlBits.cr0PE == 0
        if !real && a & 0x80 == 0 { return false }
        if a & 8 != 0 {
            if write && !real { return false }
            if !write && a & 2 == 0 { return false }
        } else if write && a & 2 == 0 {
            return false
        }
        let last = offset &+ UInt64(size) &- 1
        if a & 0xC == 4 {
            // Expand-down: valid offsets are above the limit, up to 64 KiB or 4 GiB.
            let upper: UInt64 = s.isDefaultBig ? 0xFFFF_FFFF : 0xFFFF
            return offset > UInt64(s.limit) && last <= upper && last >= offset
        }
        return last <= UInt64(s.limit) && last >= offset
    }
}
