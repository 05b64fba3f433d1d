// Virtual-8086 mode (EFLAGS.VM in 32-bit protected mode, SDM vol. 3
// chapter 20): real-mode addressing at CPL 3, the IOPL-sensitive
// instructions (CLI, STI, PUSHF, POPF, INT n, IRET: #GP(0) below IOPL 3),
// interrupts to a 32-bit handler at CPL 0 and IRET back; the virtual
// interrupt flag of CR4.VME (and CR4.PVI for CLI/STI at CPL 3) with the
// TSS's interrupt redirection bitmap; and the TSS I/O permission bitmap,
// which IN, OUT, INS and OUTS consult in virtual-8086 mode and above IOPL
// in protected mode.
//
// Segment registers in virtual-8086 mode hold base = selector * 16, a 64
// KiB limit and the attributes VMX requires there (0xF3: present, DPL 3,
// read/write data), so that CS.DPL, the CPL, is 3.

extension SegmentRegister {
    /// A segment register as virtual-8086 mode loads it.
    public static func virtual8086(selector: UInt16) -> SegmentRegister {
        SegmentRegister(selector: selector, base: UInt64(selector) << 4, limit: 0xFFFF, attributes: 0xF3)
    }
}

extension RFLAGS {
    /// VIF and VIP: the virtual interrupt flag and pending flag of CR4.VME and PVI.
    public static let vif: UInt64 = 1 << 19
    public static let vip: UInt64 = 1 << 20
}

extension X86CPU {
    /// In virtual-8086 mode.
    @inline(__always)
    var inVirtual8086: Bool { state.flags.bits & RFLAGS.vm != 0 }

    /// EFLAGS.IOPL.
    @inline(__always)
    var iopl: UInt8 { UInt8(truncatingIfNeeded: (state.flags.bits & RFLAGS.iopl) >> 12) }

    /// Virtual-8086 mode below IOPL 3 with CR4.VME: the IOPL-sensitive
    /// instructions act on VIF instead of faulting.
    var virtualInterruptsInV86: Bool { inVirtual8086 && iopl < 3 && state.cr4 & ControlBits.cr4VME != 0 }

    /// The register image a real-mode style load gives `selector`: real
    /// mode's, or virtual-8086 mode's (DPL 3).
    mutating func realStyleSegment(_ selector: UInt16, code: Bool) -> SegmentRegister {
        inVirtual8086 ? .virtual8086(selector: selector) : .realMode(selector: selector, code: code)
    }

    // MARK: CLI, STI, PUSHF, POPF

    /// FA CLI, FB STI: IF when CPL <= IOPL (always in real mode); else VIF
    /// in virtual-8086 mode with CR4.VME or at CPL 3 with CR4.PVI (an STI
    /// with VIP set is #GP(0)); else #GP(0).
    mutating func executeInterruptFlag(set: Bool) -> Bool {
        let real = state.cr0 & ControlBits.cr0PE == 0
        let cpl = state.privilegeLevel()
        if real || (!inVirtual8086 && cpl <= iopl) || (inVirtual8086 && iopl == 3) {
            if !set {
                state.flags.bits &= ~RFLAGS.if
            } else {
                // Only an STI that sets IF opens a shadow.
                if state.flags.bits & RFLAGS.if == 0 { interruptShadow = true }
                state.flags.bits |= RFLAGS.if
            }
            return true
        }
        let virtual = virtualInterruptsInV86 || (!inVirtual8086 && cpl == 3 && state.cr4 & ControlBits.cr4PVI != 0)
        guard virtual else { return fault(.gp, errorCode: 0) }
        if !set {
            state.flags.bits &= ~RFLAGS.vif
        } else {
            guard state.flags.bits & RFLAGS.vip == 0 else { return fault(.gp, errorCode: 0) }
            state.flags.bits |= RFLAGS.vif
        }
        return true
    }

    /// PUSHF and POPF in virtual-8086 mode. At IOPL 3 they act as in real
    /// mode but for IOPL (and VM, RF, VIF, VIP), which stay. Below IOPL 3
    /// they are #GP(0), but the 16-bit forms with CR4.VME: PUSHF pushes IF
    /// as VIF says and IOPL as 3; POPF sets VIF from the popped IF and
    /// leaves IF and IOPL (#GP(0) when it would set TF, or IF with VIP set).
    mutating func executeFlagsInVirtual8086(_ insn: Instruction) -> Bool {
        let size = stackOperandSize(insn)
        let vme = virtualInterruptsInV86
        guard iopl == 3 || (vme && size == 2) else { return fault(.gp, errorCode: 0) }
        let flags = state.flags.materialized
        if insn.opcode == 0x9C {
            var image = flags & ~(RFLAGS.vm | RFLAGS.rf)
            if vme { image = (image & ~RFLAGS.if) | (flags & RFLAGS.vif != 0 ? RFLAGS.if : 0) | RFLAGS.iopl }
            return push(image, size: size)
        }
        guard let value = top(size: size) else { return false }
        var writable = RFLAGS.writable & ~(RFLAGS.vm | RFLAGS.rf | RFLAGS.iopl | RFLAGS.vif | RFLAGS.vip) & sizeMask(size)
        var popped = value
        if vme {
            if value & RFLAGS.tf != 0 || (value & RFLAGS.if != 0 && flags & RFLAGS.vip != 0) { return fault(.gp, errorCode: 0) }
            writable = (writable & ~RFLAGS.if) | RFLAGS.vif
            popped = (value & ~RFLAGS.vif) | (value & RFLAGS.if != 0 ? RFLAGS.vif : 0)
        }
        commitPop(size: size)
        state.flags = LazyFlags(rflags: (flags & ~writable) | (popped & writable) | 0x2)
        return true
    }

    // MARK: INT n

    /// CD INT n in virtual-8086 mode. With CR4.VME, a vector whose bit in
    /// the TSS's redirection bitmap (the 32 bytes below the I/O bitmap) is
    /// clear goes to the 8086 handler of the interrupt table at linear 0,
    /// as in real mode (below IOPL 3 the FLAGS image carries VIF as IF and
    /// IOPL 3, and VIF is cleared rather than IF). Otherwise IOPL 3 sends
    /// it through the IDT and a lower IOPL is #GP(0).
    mutating func softwareInterruptInVirtual8086(_ vector: UInt8, _ insn: Instruction) -> Bool {
        if state.cr4 & ControlBits.cr4VME != 0 {
            guard let redirected = redirectsInterrupt(vector) else { return false }
            if redirected { return redirectToVirtual8086Handler(vector, returnIP: insn.nextRIP) }
        }
        guard iopl == 3 else { return fault(.gp, errorCode: 0) }
        return deliver(vector, errorCode: nil, returnRIP: insn.nextRIP, software: true)
    }

    /// Whether bit `vector` of the interrupt redirection bitmap is clear;
    /// #GP(0) when the TSS is not a 32-bit one or the bitmap lies beyond
    /// its limit.
    mutating func redirectsInterrupt(_ vector: UInt8) -> Bool? {
        let tr = state.tr
        guard tr.isPresent, tr.attributes & 8 != 0, tr.limit >= 0x67 else {
            _ = fault(.gp, errorCode: 0)
            return nil
        }
        guard let ioBase = readSystem(tr.base &+ 0x66, size: 2) else { return nil }
        let offset = Int(ioBase) - 32 + Int(vector >> 3)
        guard offset >= 0, UInt64(offset) <= UInt64(tr.limit) else {
            _ = fault(.gp, errorCode: 0)
            return nil
        }
        guard let bits = readSystem(tr.base &+ UInt64(offset), size: 1) else { return nil }
        return bits & (1 << UInt64(vector & 7)) == 0
    }

    mutating func redirectToVirtual8086Handler(_ vector: UInt8, returnIP: UInt64) -> Bool {
        guard let pointer = readSystem(UInt64(vector) * 4, size: 4) else { return false }
        let flags = state.flags.materialized
        var image = flags & 0xFFFF
        let virtual = iopl < 3
        if virtual { image = (image & ~RFLAGS.if) | (flags & RFLAGS.vif != 0 ? RFLAGS.if : 0) | RFLAGS.iopl }
        let savedSP = state.reg(4)
        guard push(image, size: 2), push(UInt64(state.cs.selector), size: 2), push(returnIP & 0xFFFF, size: 2) else {
            state.setReg(4, savedSP)
            return false
        }
        var cleared = RFLAGS.tf | RFLAGS.rf
        cleared |= virtual ? RFLAGS.vif : RFLAGS.if
        state.flags.bits = flags & ~cleared
        state.cs = .virtual8086(selector: UInt16(truncatingIfNeeded: pointer >> 16))
        state.rip = pointer & 0xFFFF
        return true
    }

    // MARK: IRET

    /// IRET in virtual-8086 mode: at IOPL 3 a real-mode IRET that leaves
    /// IOPL (and VM, VIF, VIP) as they are; below it #GP(0), but the 16-bit
    /// form with CR4.VME, which sets VIF from the popped IF and leaves IF
    /// (#GP(0) when it would set TF, or IF with VIP set).
    mutating func iretInVirtual8086(_ insn: Instruction) -> Bool {
        let size = insn.operandSize
        let vme = virtualInterruptsInV86
        guard iopl == 3 || (vme && size == 2) else { return fault(.gp, errorCode: 0) }
        guard let ip = top(size: size), let cs = top(size: size, at: UInt64(size)),
              let value = top(size: size, at: UInt64(2 * size)) else { return false }
        guard ip <= 0xFFFF else { return fault(.gp, errorCode: 0) }
        let flags = state.flags.materialized
        var writable = RFLAGS.writable & ~(RFLAGS.vm | RFLAGS.iopl | RFLAGS.vif | RFLAGS.vip) & sizeMask(size)
        var popped = value
        if vme {
            if value & RFLAGS.tf != 0 || (value & RFLAGS.if != 0 && flags & RFLAGS.vip != 0) { return fault(.gp, errorCode: 0) }
            writable = (writable & ~RFLAGS.if) | RFLAGS.vif
            popped = (value & ~RFLAGS.vif) | (value & RFLAGS.if != 0 ? RFLAGS.vif : 0)
        }
        commitPop(size: 3 * size)
        state.cs = .virtual8086(selector: UInt16(truncatingIfNeeded: cs))
        state.rip = ip
        state.flags = LazyFlags(rflags: (flags & ~writable) | (popped & writable) | 0x2)
        return true
    }

    /// A 32-bit IRET at CPL 0 whose EFLAGS image has VM set: back to
    /// virtual-8086 mode, popping EIP, CS, EFLAGS (all of it), ESP, SS, ES,
    /// DS, FS and GS (#SS(0) when the 36 bytes are not within the stack,
    /// #GP(0) for an EIP beyond 64 KiB).
    mutating func iretToVirtual8086(ip: UInt64, cs: UInt64, flags: UInt64) -> Bool {
        var words = InlineArray<6, UInt64>(repeating: 0)  // ESP SS ES DS FS GS
        for i in 0..<6 {
            guard let value = top(size: 4, at: UInt64(12 + 4 * i)) else { return false }
            words[i] = value
        }
        guard ip & 0xFFFF_FFFF <= 0xFFFF else { return fault(.gp, errorCode: 0) }
        state.rflags = flags & 0xFFFF_FFFF
        state.cs = .virtual8086(selector: UInt16(truncatingIfNeeded: cs))
        state.rip = ip & 0xFFFF
        state.ss = .virtual8086(selector: UInt16(truncatingIfNeeded: words[1]))
        state.setReg(4, words[0] & 0xFFFF_FFFF)
        state.es = .virtual8086(selector: UInt16(truncatingIfNeeded: words[2]))
        state.ds = .virtual8086(selector: UInt16(truncatingIfNeeded: words[3]))
        state.fs = .virtual8086(selector: UInt16(truncatingIfNeeded: words[4]))
        state.gs = .virtual8086(selector: UInt16(truncatingIfNeeded: words[5]))
        return true
    }

    // MARK: The I/O permission bitmap

    /// Whether IN, OUT, INS or OUTS may use `size` bytes at `port`: always
    /// in real mode and at CPL <= IOPL outside virtual-8086 mode; otherwise
    /// when the TSS's I/O bitmap has a clear bit for each byte. #GP(0)
    /// when not (no 32- or 64-bit TSS, the port's bitmap byte beyond its limit).
    mutating func ioPermitted(port: UInt16, size: Int) -> Bool {
        if state.cr0 & ControlBits.cr0PE == 0 { return true }
        if !inVirtual8086 && state.privilegeLevel() <= iopl { return true }
        let tr = state.tr
        guard tr.isPresent, tr.attributes & 0x1F == 0xB || tr.attributes & 0x1F == 0x9, tr.limit >= 0x67 else {
            return fault(.gp, errorCode: 0)
        }
        guard let ioBase = readSystem(tr.base &+ 0x66, size: 2) else { return false }
        // Two bytes are read, of which the first must be within the limit
        // (as the host's KVM checks it: emulator_io_port_access_allowed).
        let offset = ioBase &+ UInt64(port >> 3)
        guard offset <= UInt64(tr.limit) else { return fault(.gp, errorCode: 0) }
        guard let bits = readSystem(tr.base &+ offset, size: 2) else { return false }
        let mask: UInt64 = (1 << UInt64(size)) - 1
        return (bits >> UInt64(port & 7)) & mask == 0 ? true : fault(.gp, errorCode: 0)
    }
}
