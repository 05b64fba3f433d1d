// System instructions: LGDT/LIDT/SGDT/SIDT/SMSW/LMSW/INVLPG/SWAPGS (0F 01),
// MOV to and from control and debug registers, CLTS, INVD, WBINVD,
// RDMSR/WRMSR, CPUID, RDTSC, and the bit tests BT/BTS/BTR/BTC.

extension X86CPU {
    // MARK: 0F 01

    mutating func executeGroup7(_ insn: inout Instruction) -> Bool {
        let operation = insn.reg & 7
        if insn.mod == 3 && operation == 7 && insn.rm & 7 == 0 { return executeSwapGS(&insn) }
        if insn.mod == 3 && operation == 1 && (insn.rm & 7 == 2 || insn.rm & 7 == 3) { return executeSMAPFlag(&insn) }
        if insn.mod == 3 && operation == 7 && insn.rm & 7 == 1 { return executeRDTSCP(&insn) }
        if operation != 4 && (insn.mod == 3 || operation == 5) { return undefined() }
        if operation != 0 && operation != 1 && operation != 4 && state.privilegeLevel() != 0 {
            return fault(.gp, errorCode: 0)
        }
        switch operation {
        case 0, 1:  // SGDT, SIDT: limit then base (8 bytes in 64-bit mode, else 4)
            let table = operation == 0 ? state.gdtr : state.idtr
            guard write(insn.segment, insn.offset, UInt64(table.limit), size: 2),
                  write(insn.segment, (insn.offset &+ 2) & sizeMask(insn.addressSize), table.base, size: insn.mode64 ? 8 : 4)
            else { return false }
        case 2, 3:  // LGDT, LIDT: a 16-bit operand size keeps 24 bits of the base
            guard let limit = read(insn.segment, insn.offset, size: 2),
                  var base = read(insn.segment, (insn.offset &+ 2) & sizeMask(insn.addressSize), size: insn.mode64 ? 8 : 4)
            else { return false }
            if !insn.mode64 && insn.operandSize == 2 { base &= 0xFF_FFFF }
            let table = DescriptorTableRegister(base: base, limit: UInt16(truncatingIfNeeded: limit))
            if operation == 2 { state.gdtr = table } else { state.idtr = table }
        case 4:  // SMSW
            return writeOperand(insn, state.cr0 & (insn.isMemory ? 0xFFFF : sizeMask(insn.operandSize)),
                                size: insn.isMemory ? 2 : insn.operandSize)
        case 6:  // LMSW: PE can be set, not cleared; MP EM TS follow
            guard let value = readOperand(insn, size: 2) else { return false }
            state.cr0 = (state.cr0 & ~0xE) | (value & 0xF) | (state.cr0 & 1)
        default:  // 7: INVLPG
            invalidatePage(linear(insn.segment, insn.offset))
        }
        state.rip = insn.nextRIP
        return true
    }

    // MARK: Control registers

    /// 0F 20 MOV r, CRn and 0F 22 MOV CRn, r: always a register operand, 64
    /// bits in 64-bit mode and 32 elsewhere.
    mutating func executeMoveControl(_ insn: inout Instruction) -> Bool {
        guard state.privilegeLevel() == 0 else { return fault(.gp, errorCode: 0) }
        let size = insn.mode64 ? 8 : 4
        let register = insn.reg
        if insn.opcode == 0x120 {
            let value: UInt64
            switch register {
            case 0: value = state.cr0
            case 2: value = state.cr2
            case 3: value = state.cr3
            case 4: value = state.cr4
            case 8:
                if platform.forwardsSystemRegisters {
                    return forwardSystemRegister(.cr8, written: nil, destination: insn.rm, nextRIP: insn.nextRIP)
                }
                value = 0
            default: return undefined()
            }
            state.write(insn.rm, value & sizeMask(size), size: 8, legacyHighBytes: false)
        } else {
            let value = state.read(insn.rm, size: size, legacyHighBytes: false)
            switch register {
            case 0: guard setCR0(value) else { return false }
            case 2: state.cr2 = value
            case 3:
                // Bits above MAXPHYADDR are reserved in long mode.
                if state.efer & ControlBits.eferLMA != 0 && value & ~((1 << guestFeatures.physicalAddressBits) - 1) != 0 {
                    return fault(.gp, errorCode: 0)
                }
                if isPAEPaging(cr0: state.cr0, cr4: state.cr4) {
                    guard let entries = readPDPTEs(value, check: true) else { return false }
                    state.cr3 = value
                    state.pdptes = entries
                    state.pdptesLoaded = true
                } else {
                    state.cr3 = value
                }
            case 4: guard setCR4(value) else { return false }
            case 8:
                if platform.forwardsSystemRegisters {
                    return forwardSystemRegister(.cr8, written: value, nextRIP: insn.nextRIP)
                }
            default: return undefined()
            }
        }
        state.rip = insn.nextRIP
        return true
    }

    /// A write to CR0 with the checks of MOV CR0: reserved bits, PG without
    /// PE, NW without CD; setting PG with EFER.LME enters long mode (which
    /// needs CR4.PAE), clearing it leaves.
    mutating func setCR0(_ requested: UInt64) -> Bool {
        let value = requested | ControlBits.cr0ET
        if value >> 32 != 0 { return fault(.gp, errorCode: 0) }
        if value & ControlBits.cr0PG != 0 && value & ControlBits.cr0PE == 0 { return fault(.gp, errorCode: 0) }
        if value & ControlBits.cr0NW != 0 && value & ControlBits.cr0CD == 0 { return fault(.gp, errorCode: 0) }
        let pagingOn = value & ControlBits.cr0PG != 0 && state.cr0 & ControlBits.cr0PG == 0
        let pagingOff = value & ControlBits.cr0PG == 0 && state.cr0 & ControlBits.cr0PG != 0
        if pagingOn && state.efer & ControlBits.eferLME != 0 {
            guard state.cr4 & ControlBits.cr4PAE != 0 else { return fault(.gp, errorCode: 0) }
            state.efer |= ControlBits.eferLMA
        }
        if pagingOff && state.efer & ControlBits.eferLMA != 0 {
            // Leaving long mode from 64-bit code is #GP.
            if case .long64 = state.mode { return fault(.gp, errorCode: 0) }
            state.efer &= ~ControlBits.eferLMA
        }
        // Entering PAE paging (or changing CD, NW, PG in it) loads the PDPTEs.
        let loadsPDPTEs = isPAEPaging(cr0: value, cr4: state.cr4)
            && (value ^ state.cr0) & (ControlBits.cr0PG | ControlBits.cr0CD | ControlBits.cr0NW) != 0
        var entries: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
        if loadsPDPTEs {
            guard let loaded = readPDPTEs(state.cr3, check: true) else { return false }
            entries = loaded
        }
        state.cr0 = value
        if loadsPDPTEs {
            state.pdptes = entries
            state.pdptesLoaded = true
        }
        return true
    }

    /// PAE paging outside long mode: the PDPTEs are cached registers.
    func isPAEPaging(cr0: UInt64, cr4: UInt64) -> Bool {
        cr0 & ControlBits.cr0PG != 0 && cr4 & ControlBits.cr4PAE != 0 && state.efer & ControlBits.eferLMA == 0
    }

    /// CR4 bits the CPU accepts: VME PVI TSD DE PSE PAE MCE PGE PCE OSFXSR OSXMMEXCPT.
    static let cr4Writable: UInt64 = 0x7FF

    mutating func setCR4(_ value: UInt64) -> Bool {
        // SMEP and SMAP exist where the guest's CPUID shows them (PageProtection.swift).
        if value & ~(Self.cr4Writable | guestFeatures.cr4FeatureBits) != 0 { return fault(.gp, errorCode: 0) }
        if state.efer & ControlBits.eferLMA != 0 && value & ControlBits.cr4PAE == 0 { return fault(.gp, errorCode: 0) }
        let loadsPDPTEs = isPAEPaging(cr0: state.cr0, cr4: value)
            && (value ^ state.cr4) & (ControlBits.cr4PAE | ControlBits.cr4PGE | ControlBits.cr4PSE) != 0
        var entries: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
        if loadsPDPTEs {
            guard let loaded = readPDPTEs(state.cr3, check: true) else { return false }
            entries = loaded
        }
        state.cr4 = value
        if loadsPDPTEs {
            state.pdptes = entries
            state.pdptesLoaded = true
        }
        return true
    }

    // MARK: CLTS, caches (MOV DR is in Debug.swift)

    /// 0F 06 CLTS (clears CR0.TS), 0F 08 INVD, 0F 09 WBINVD (no caches to
    /// write back): CPL 0 only.
    mutating func executeCacheOrCLTS(_ insn: inout Instruction) -> Bool {
        guard state.privilegeLevel() == 0 else { return fault(.gp, errorCode: 0) }
        if insn.opcode == 0x106 { state.cr0 &= ~ControlBits.cr0TS }
        state.rip = insn.nextRIP
        return true
    }

    // MARK: MSRs

    /// The value of MSR `index`, or nil for an MSR the CPU does not have
    /// (for the guest: does not show in its CPUID). `host` reads (the
    /// owner saving state) see every MSR the CPU has.
    public func readMSR(_ index: UInt32, host: Bool = false) -> UInt64? {
        let m = state.msrs
        switch index {
        case MSR.archCapabilities:
            // KVM: the guest reads it only where its CPUID shows it.
            guard host || findCPUID(7, 0).map({ $0.edx & ArchCapabilities.cpuidBit != 0 }) == true else { return nil }
            return m.archCapabilities
        case MSR.efer: return state.efer
        case MSR.fsBase: return state.fs.base
        case MSR.gsBase: return state.gs.base
        case MSR.tsc: return tsc.read()
        case MSR.tscAux: return UInt64(tsc.aux)
        case MSR.apicBase: return m.apicBase
        case MSR.sysenterCS: return m.sysenterCS
        case MSR.sysenterESP: return m.sysenterESP
        case MSR.sysenterEIP: return m.sysenterEIP
        case MSR.pat: return m.pat
        case MSR.star: return m.star
        case MSR.lstar: return m.lstar
        case MSR.cstar: return m.cstar
        case MSR.syscallMask: return m.syscallMask
        case MSR.kernelGSBase: return m.kernelGSBase
        default: return nil
        }
    }

    /// Writes MSR `index` with WRMSR's rules; false for an MSR the CPU does
    /// not have or a value it refuses (the guest gets #GP). `host` writes (the
    /// owner restoring state) may set EFER.LMA, which the guest cannot.
    public mutating func writeMSR(_ index: UInt32, _ value: UInt64, host: Bool = false) -> Bool {
        switch index {
        case MSR.efer:
            let known = ControlBits.eferSCE | ControlBits.eferLME | ControlBits.eferLMA | ControlBits.eferNXE
            guard value & ~known == 0 else { return false }
            if host {
                state.efer = value
            } else {
                // LME cannot change while paging is on; LMA is the CPU's to set.
                if state.cr0 & ControlBits.cr0PG != 0 && (value ^ state.efer) & ControlBits.eferLME != 0 { return false }
                state.efer = (value & ~ControlBits.eferLMA) | (state.efer & ControlBits.eferLMA)
            }
        case MSR.fsBase, MSR.gsBase, MSR.kernelGSBase, MSR.lstar, MSR.cstar:
            // Linear addresses: they must be canonical.
            let top = Int64(bitPattern: value) >> 47
            guard top == 0 || top == -1 else { return false }
            switch index {
            case MSR.fsBase: state.fs.base = value
            case MSR.gsBase: state.gs.base = value
            case MSR.kernelGSBase: state.msrs.kernelGSBase = value
            case MSR.lstar: state.msrs.lstar = value
            default: state.msrs.cstar = value
            }
        case MSR.tsc:
            if host { platform.tsc.offset = tsc.offset(toRead: value, atHostNanoseconds: TimeStampCounter.hostNanoseconds()) }
            else { platform.tsc.guestWrite(value) }
        case MSR.tscAux:
            guard host || value >> 32 == 0 else { return false }
            platform.tsc.aux = UInt32(truncatingIfNeeded: value)
        case MSR.apicBase: state.msrs.apicBase = value
        case MSR.sysenterCS: state.msrs.sysenterCS = value
        case MSR.sysenterESP: state.msrs.sysenterESP = value
        case MSR.sysenterEIP: state.msrs.sysenterEIP = value
        case MSR.pat:
            // Each byte a memory type: 0 1 4 5 6 7.
            for i in 0..<8 where [2, 3].contains((value >> UInt64(i * 8)) & 0xFF) || (value >> UInt64(i * 8)) & 0xF8 != 0 {
                return false
            }
            state.msrs.pat = value
        case MSR.star: state.msrs.star = value
        case MSR.syscallMask: state.msrs.syscallMask = value & 0xFFFF_FFFF
        case MSR.archCapabilities:
            // Read-only for the guest; the owner may report fewer capabilities, never more (KVM).
            guard host, value & ~ArchCapabilities.softCPU == 0 else { return false }
            state.msrs.archCapabilities = value
        default: return false
        }
        return true
    }

    /// 0F 30 WRMSR, 0F 32 RDMSR: ECX selects, EDX:EAX holds the value.
    mutating func executeMSR(_ insn: inout Instruction) -> Bool {
        guard state.privilegeLevel() == 0 else { return fault(.gp, errorCode: 0) }
        let index = UInt32(truncatingIfNeeded: state.reg(1))
        if msrIntercept.enabled { return interceptMSR(&insn, index: index) }
        if forwardsMSR(index) {
            let written = insn.opcode == 0x132 ? nil : (state.reg(2) << 32) | (state.reg(0) & 0xFFFF_FFFF)
            return forwardSystemRegister(.msr(index), written: written, nextRIP: insn.nextRIP)
        }
        if insn.opcode == 0x132 {
            guard let value = readMSR(index) else { return fault(.gp, errorCode: 0) }
            state.setReg(0, value & 0xFFFF_FFFF)
            state.setReg(2, value >> 32)
        } else {
            let value = (state.reg(2) << 32) | (state.reg(0) & 0xFFFF_FFFF)
            guard writeMSR(index, value) else { return fault(.gp, errorCode: 0) }
        }
        state.rip = insn.nextRIP
        return true
    }

    // MARK: CPUID, RDTSC

    /// The leaf CPUID gives for `function`/`index`, by KVM's kvm_cpuid: a
    /// leaf not in the table but above its class's highest (leaf 0,
    /// 0x40000000, 0x80000000 or 0xC0000000) gets the highest basic leaf, as
    /// Intel CPUs do (not for an AMD or Hygon vendor); any other gets zeros.
    public func cpuidLeaf(function: UInt32, index: UInt32) -> CPUIDLeaf {
        if let leaf = findCPUID(function, index) { return leaf }
        if let basic = findCPUID(0, 0), !Self.isAMDVendor(basic) {
            let classFunction: UInt32
            if function >= 0x4000_0000 && function <= 0x4FFF_FFFF {
                classFunction = function & 0xFFFF_FF00
            } else if function >= 0xC000_0000 {
                classFunction = 0xC000_0000
            } else {
                classFunction = function & 0x8000_0000
            }
            let inRange = findCPUID(classFunction, 0).map { function <= $0.eax } ?? false
            if !inRange, let leaf = findCPUID(basic.eax, index) {
                return CPUIDLeaf(function: function, index: index, eax: leaf.eax, ebx: leaf.ebx, ecx: leaf.ecx, edx: leaf.edx)
            }
        }
        return CPUIDLeaf(function: function, index: index)
    }

    /// "AuthenticAMD", "AMDisbetter!" or "HygonGenuine" in leaf 0.
    static func isAMDVendor(_ leaf: CPUIDLeaf) -> Bool {
        let vendor = (leaf.ebx, leaf.edx, leaf.ecx)
        return vendor == (0x6874_7541, 0x6974_6E65, 0x444D_4163) || vendor == (0x6953_4D41, 0x7465_6273, 0x2172_6574)
            || vendor == (0x6F67_7948, 0x6E65_476E, 0x656E_6975)
    }

    func findCPUID(_ function: UInt32, _ index: UInt32) -> CPUIDLeaf? {
        cpuid.first { $0.function == function && (!$0.significantIndex || $0.index == index) }
    }

    mutating func executeCPUID(_ insn: inout Instruction) -> Bool {
        let leaf = cpuidLeaf(function: UInt32(truncatingIfNeeded: state.reg(0)), index: UInt32(truncatingIfNeeded: state.reg(1)))
        state.setReg(0, UInt64(leaf.eax))
        state.setReg(3, UInt64(leaf.ebx))
        state.setReg(1, UInt64(leaf.ecx))
        state.setReg(2, UInt64(leaf.edx))
        state.rip = insn.nextRIP
        return true
    }

    // MARK: BT BTS BTR BTC

    /// The operation (0 BT, 1 BTS, 2 BTR, 3 BTC), the bit within the
    /// operand and the memory operand's offset: a register bit offset with a
    /// memory operand reaches beyond the operand, signed, in operand-size steps.
    mutating func bitTestOperand(_ insn: Instruction) -> (operation: Int, bit: UInt64, offset: UInt64) {
        let size = insn.operandSize
        let bits = UInt64(size * 8)
        if insn.opcode == 0x1BA { return (insn.reg & 3, insn.immediate & (bits - 1), insn.offset) }
        let index = readRegister(insn, size: size)
        var offset = insn.offset
        if insn.isMemory {
            let signed = Int64(bitPattern: signExtend(index, size: size))
            offset = (offset &+ UInt64(bitPattern: (signed >> Int64(size == 8 ? 6 : size == 4 ? 5 : 4)) &* Int64(size)))
                & sizeMask(insn.addressSize)
        }
        return ((insn.opcode >> 3) & 3, index & (bits - 1), offset)  // A3 0, AB 1, B3 2, BB 3
    }

    /// 0F A3/AB/B3/BB (bit offset in a register) and 0F BA /4-7 (immediate).
    /// A register offset with a memory operand reaches beyond the operand.
    mutating func executeBitTest(_ insn: inout Instruction) -> Bool {
        let size = insn.operandSize
        if insn.opcode == 0x1BA { guard insn.reg & 7 >= 4 else { return undefined() } }
        let (operation, bit, offset) = bitTestOperand(insn)
        let value: UInt64
        if insn.isMemory {
            // BTS BTR BTC read with the write's checks (see readOperandForUpdate);
            // the offset reached by the bit index is checked against the segment as any other.
            guard let v = operation == 0 ? read(insn.segment, offset, size: size)
                : readForUpdate(insn.segment, offset, size: size) else { return false }
            value = v
        } else {
            value = state.read(insn.rm, size: size, legacyHighBytes: false)
        }
        let mask: UInt64 = 1 << bit
        let flags = state.flags.materialized
        state.flags.set(arithmetic: value & mask != 0 ? flags | RFLAGS.cf : flags & ~RFLAGS.cf)
        if operation != 0 {
            let result: UInt64
            switch operation {
            case 1: result = value | mask
            case 2: result = value & ~mask
            default: result = value ^ mask
            }
            if insn.isMemory {
                guard write(insn.segment, offset, result, size: size) else { return false }
            } else {
                state.write(insn.rm, result, size: size, legacyHighBytes: false)
            }
        }
        state.rip = insn.nextRIP
        return true
    }
}
