// The instructions that read and load descriptors: 0F 00 (SLDT, STR, LLDT,
// LTR, VERR, VERW), LAR, LSL and ARPL. None exists in real mode (#UD).

extension X86CPU {
    /// 0F 00 /0-/5.
    mutating func executeGroup6(_ insn: inout Instruction) -> Bool {
        guard state.cr0 & ControlBits.cr0PE != 0, state.flags.bits & RFLAGS.vm == 0 else { return undefined() }
        switch insn.reg & 7 {
        case 0, 1:  // SLDT, STR: a register takes the selector zero-extended, memory 16 bits
            let selector = UInt64(insn.reg & 7 == 0 ? state.ldtr.selector : state.tr.selector)
            guard writeOperand(insn, selector, size: insn.isMemory ? 2 : insn.operandSize) else { return false }
        case 2, 3:
            guard state.privilegeLevel() == 0 else { return fault(.gp, errorCode: 0) }
            guard let value = readOperand(insn, size: 2) else { return false }
            let selector = UInt16(truncatingIfNeeded: value)
            guard insn.reg & 7 == 2 ? loadLDT(selector) : loadTaskRegister(selector) else { return false }
        case 4, 5:
            guard let value = readOperand(insn, size: 2) else { return false }
            guard let ok = verify(UInt16(truncatingIfNeeded: value), write: insn.reg & 7 == 5) else { return false }
            setZF(ok)
        default:
            return undefined()
        }
        state.rip = insn.nextRIP
        return true
    }

    mutating func setZF(_ value: Bool) {
        let flags = state.flags.materialized
        state.flags.set(arithmetic: value ? flags | RFLAGS.zf : flags & ~RFLAGS.zf)
    }

    /// The 16-byte form of a system descriptor in long mode: the upper
    /// type field must be 0 and the base canonical (#GP(selector)).
    mutating func systemDescriptor(_ selector: UInt16) -> (Descriptor, UInt64)? {
        let long = state.efer & ControlBits.eferLMA != 0
        guard let (descriptor, address) = readDescriptor(selector, wide: long) else { return nil }
        if long && ((descriptor.high >> 40) & 0x1F != 0 || !Self.isCanonical(descriptor.base)) && descriptor.isSystem {
            _ = fault(.gp, errorCode: UInt32(selector & 0xFFFC))
            return nil
        }
        return (descriptor, address)
    }

    /// LLDT: a null selector leaves the LDT unusable; otherwise an LDT
    /// descriptor (type 2) from the GDT, #GP(selector) or #NP(selector).
    mutating func loadLDT(_ selector: UInt16) -> Bool {
        if selector & 0xFFFC == 0 {
            state.ldtr = Self.nullSegment(selector)
            return true
        }
        let errorCode = UInt32(selector & 0xFFFC)
        guard selector & 4 == 0 else { return fault(.gp, errorCode: errorCode) }
        guard let (descriptor, _) = systemDescriptor(selector) else { return false }
        guard descriptor.isSystem && descriptor.type == 2 else { return fault(.gp, errorCode: errorCode) }
        guard descriptor.isPresent else { return fault(.np, errorCode: errorCode) }
        state.ldtr = descriptor.segment(selector: selector)
        return true
    }

    /// LTR: an available TSS (32- or 64-bit; 16-bit outside long mode) from
    /// the GDT, marked busy there and in TR; #GP(0) for a null selector.
    mutating func loadTaskRegister(_ selector: UInt16) -> Bool {
        guard selector & 0xFFFC != 0 else { return fault(.gp, errorCode: 0) }
        let errorCode = UInt32(selector & 0xFFFC)
        guard selector & 4 == 0 else { return fault(.gp, errorCode: errorCode) }
        guard let (found, address) = systemDescriptor(selector) else { return false }
        var descriptor = found
        let long = state.efer & ControlBits.eferLMA != 0
        guard descriptor.isSystem && (descriptor.type == 9 || (!long && descriptor.type == 1)) else {
            return fault(.gp, errorCode: errorCode)
        }
        guard descriptor.isPresent else { return fault(.np, errorCode: errorCode) }
        descriptor.low |= 2 << 40
        guard writeSystem(address &+ 5, (descriptor.low >> 40) & 0xFF, size: 1) else { return false }
        state.tr = descriptor.segment(selector: selector)
        return true
    }

    /// The descriptor LAR, LSL, VERR and VERW look at, or nil (ZF clear)
    /// for a null selector or one beyond its table: these never fault on
    /// the selector, only on reading the table.
    mutating func probeDescriptor(_ selector: UInt16) -> Descriptor?? {
        guard selector & 0xFFFC != 0 else { return .some(nil) }
        let table = selector & 4 != 0 ? (state.ldtr.isPresent ? (state.ldtr.base, UInt64(state.ldtr.limit)) : nil)
            : (state.gdtr.base, UInt64(state.gdtr.limit))
        guard let (base, limit) = table, UInt64(selector & 0xFFF8) + 7 <= limit else { return .some(nil) }
        guard let low = readSystem(base &+ UInt64(selector & 0xFFF8), size: 8) else { return nil }
        return .some(Descriptor(low: low))
    }

    /// VERR, VERW: whether the segment is readable (writable) at the CPL
    /// and the selector's RPL.
    mutating func verify(_ selector: UInt16, write: Bool) -> Bool? {
        guard let probed = probeDescriptor(selector) else { return nil }
        guard let descriptor = probed, !descriptor.isSystem else { return false }
        let level = max(state.privilegeLevel(), UInt8(selector & 3))
        if write { return descriptor.isWritableData && descriptor.dpl >= level }
        guard descriptor.isReadable else { return false }
        return descriptor.isConforming || descriptor.dpl >= level
    }

    /// 0F 02 LAR, 0F 03 LSL: the access rights (bits 8-23 of the
    /// descriptor's high word) or the scaled limit, and ZF, when the
    /// descriptor is of a type they accept and visible at CPL and RPL;
    /// otherwise ZF clear and the destination unchanged.
    mutating func executeLARLSL(_ insn: inout Instruction) -> Bool {
        guard state.cr0 & ControlBits.cr0PE != 0, state.flags.bits & RFLAGS.vm == 0 else { return undefined() }
        guard let value = readOperand(insn, size: 2) else { return false }
        let selector = UInt16(truncatingIfNeeded: value)
        guard let probed = probeDescriptor(selector) else { return false }
        let lar = insn.opcode == 0x102
        var ok = false
        if let descriptor = probed {
            let long = state.efer & ControlBits.eferLMA != 0
            var typeOK = true
            if descriptor.isSystem {
                switch descriptor.type {
                case 2, 9, 0xB: typeOK = true
                case 0xC: typeOK = lar
                case 1, 3: typeOK = !long
                case 4, 5: typeOK = lar && !long
                default: typeOK = false
                }
            }
            let level = max(state.privilegeLevel(), UInt8(selector & 3))
            let visible = descriptor.isConforming || descriptor.dpl >= level
            ok = typeOK && visible
            if ok {
                let size = insn.operandSize
                let result: UInt64
                if lar {
                    result = (descriptor.low >> 32) & (size == 2 ? 0xFF00 : 0x00F0_FF00)
                } else {
                    result = UInt64(descriptor.limit) & (size == 2 ? 0xFFFF : 0xFFFF_FFFF)
                }
                writeRegister(insn, result, size: size == 8 ? 4 : size)
            }
        }
        setZF(ok)
        state.rip = insn.nextRIP
        return true
    }

    /// 63 ARPL r/m16, r16 (outside 64-bit mode): raises the destination's
    /// RPL to the source's, with ZF saying whether it did.
    mutating func executeARPL(_ insn: inout Instruction) -> Bool {
        guard state.cr0 & ControlBits.cr0PE != 0, state.flags.bits & RFLAGS.vm == 0 else { return undefined() }
        guard let destination = readOperand(insn, size: 2) else { return false }
        let source = readRegister(insn, size: 2)
        if destination & 3 < source & 3 {
            guard writeOperand(insn, (destination & ~3) | (source & 3), size: 2) else { return false }
            setZF(true)
        } else {
            setZF(false)
        }
        state.rip = insn.nextRIP
        return true
    }
}
