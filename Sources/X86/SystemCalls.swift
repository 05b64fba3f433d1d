// Fast system calls: SYSCALL/SYSRET (EFER.SCE, STAR, LSTAR, CSTAR, SFMASK;
// AMD's legacy-mode forms too) and SYSENTER/SYSEXIT (the SYSENTER MSRs;
// Intel's, usable in long mode), and SWAPGS. They load flat segments from
// the MSRs without reading the GDT.

extension X86CPU {
    /// The flat 4 GiB code segment SYSCALL and SYSENTER load (64-bit when `long`).
    static func flatCode(_ selector: UInt16, dpl: UInt8, long: Bool) -> SegmentRegister {
        SegmentRegister(selector: selector, base: 0, limit: 0xFFFF_FFFF,
                        attributes: (long ? 0xA09B : 0xC09B) | UInt16(dpl) << 5)
    }

    static func flatStack(_ selector: UInt16, dpl: UInt8) -> SegmentRegister {
        SegmentRegister(selector: selector, base: 0, limit: 0xFFFF_FFFF, attributes: 0xC093 | UInt16(dpl) << 5)
    }

    @inline(__always)
    static func isCanonical(_ address: UInt64) -> Bool {
        let top = Int64(bitPattern: address) >> 47
        return top == 0 || top == -1
    }

    /// 0F 05 SYSCALL: #UD without EFER.SCE or in real mode. CS from
    /// STAR[47:32], SS that + 8; in long mode RCX = next RIP, R11 = RFLAGS,
    /// RIP from LSTAR (64-bit code) or CSTAR (compatibility mode) and RFLAGS
    /// masked by SFMASK; in legacy mode ECX = next EIP, EIP = STAR[31:0],
    /// IF and VM cleared. RF is cleared in all.
    mutating func executeSyscall(_ insn: inout Instruction) -> Bool {
        guard state.efer & ControlBits.eferSCE != 0, state.cr0 & ControlBits.cr0PE != 0,
              state.flags.bits & RFLAGS.vm == 0 else { return undefined() }
        let selector = UInt16(truncatingIfNeeded: state.msrs.star >> 32) & 0xFFFC
        let flags = state.rflags
        if state.efer & ControlBits.eferLMA != 0 {
            state.setReg(1, insn.nextRIP)
            state.setReg(11, flags & ~RFLAGS.rf)
            state.rip = insn.mode64 ? state.msrs.lstar : state.msrs.cstar
            state.rflags = flags & ~(state.msrs.syscallMask | RFLAGS.rf)
            state.cs = Self.flatCode(selector, dpl: 0, long: true)
        } else {
            state.setReg(1, insn.nextRIP & 0xFFFF_FFFF)
            state.rip = state.msrs.star & 0xFFFF_FFFF
            state.rflags = flags & ~(RFLAGS.if | RFLAGS.vm | RFLAGS.rf)
            state.cs = Self.flatCode(selector, dpl: 0, long: false)
        }
        state.ss = Self.flatStack(selector &+ 8, dpl: 0)
        return true
    }

    /// 0F 07 SYSRET: #UD without EFER.SCE or in real mode, #GP(0) above CPL
    /// 0. To 64-bit code with REX.W (CS = STAR[63:48] + 16, RIP = RCX,
    /// which must be canonical), else to 32-bit code (CS = STAR[63:48],
    /// EIP = ECX); SS = STAR[63:48] + 8, all with RPL 3. RFLAGS from R11 in
    /// long mode; legacy mode sets IF.
    mutating func executeSysret(_ insn: inout Instruction) -> Bool {
        guard state.efer & ControlBits.eferSCE != 0, state.cr0 & ControlBits.cr0PE != 0,
              state.flags.bits & RFLAGS.vm == 0 else { return undefined() }
        guard state.privilegeLevel() == 0 else { return fault(.gp, errorCode: 0) }
        let base = UInt16(truncatingIfNeeded: state.msrs.star >> 48)
        let to64 = insn.mode64 && insn.rex & 8 != 0
        if to64 && !Self.isCanonical(state.reg(1)) { return fault(.gp, errorCode: 0) }
        if state.efer & ControlBits.eferLMA != 0 {
            state.rflags = (state.reg(11) & ~(RFLAGS.rf | RFLAGS.vm)) | 2
        } else {
            state.rflags |= RFLAGS.if
        }
        state.rip = to64 ? state.reg(1) : state.reg(1) & 0xFFFF_FFFF
        state.cs = Self.flatCode(((to64 ? base &+ 16 : base) & 0xFFFC) | 3, dpl: 3, long: to64)
        state.ss = Self.flatStack(((base &+ 8) & 0xFFFC) | 3, dpl: 3)
        return true
    }

    /// 0F 34 SYSENTER: #GP(0) in real mode or with a null SYSENTER_CS. CS
    /// from SYSENTER_CS (64-bit code in IA-32e mode), SS that + 8, rSP and
    /// rIP from SYSENTER_ESP and SYSENTER_EIP; VM, IF and RF cleared.
    mutating func executeSysenter(_ insn: inout Instruction) -> Bool {
        let selector = UInt16(truncatingIfNeeded: state.msrs.sysenterCS) & 0xFFFC
        guard state.cr0 & ControlBits.cr0PE != 0, selector != 0 else { return fault(.gp, errorCode: 0) }
        let long = state.efer & ControlBits.eferLMA != 0
        state.rflags = state.rflags & ~(RFLAGS.vm | RFLAGS.if | RFLAGS.rf)
        state.cs = Self.flatCode(selector, dpl: 0, long: long)
        state.ss = Self.flatStack(selector &+ 8, dpl: 0)
        state.setReg(4, long ? state.msrs.sysenterESP : state.msrs.sysenterESP & 0xFFFF_FFFF)
        state.rip = long ? state.msrs.sysenterEIP : state.msrs.sysenterEIP & 0xFFFF_FFFF
        return true
    }

    /// 0F 35 SYSEXIT: #GP(0) in real mode, above CPL 0 or with a null
    /// SYSENTER_CS. With REX.W to 64-bit code (CS = SYSENTER_CS + 32,
    /// SS + 40, RSP = RCX and RIP = RDX, canonical), else to 32-bit code
    /// (CS + 16, SS + 24, ESP = ECX, EIP = EDX), RPL 3.
    mutating func executeSysexit(_ insn: inout Instruction) -> Bool {
        let selector = UInt16(truncatingIfNeeded: state.msrs.sysenterCS) & 0xFFFC
        guard state.cr0 & ControlBits.cr0PE != 0, selector != 0, state.privilegeLevel() == 0,
              state.flags.bits & RFLAGS.vm == 0 else { return fault(.gp, errorCode: 0) }
        let to64 = insn.mode64 && insn.rex & 8 != 0
        if to64 && !(Self.isCanonical(state.reg(1)) && Self.isCanonical(state.reg(2))) { return fault(.gp, errorCode: 0) }
        state.cs = Self.flatCode((selector &+ (to64 ? 32 : 16)) | 3, dpl: 3, long: to64)
        state.ss = Self.flatStack((selector &+ (to64 ? 40 : 24)) | 3, dpl: 3)
        state.setReg(4, to64 ? state.reg(1) : state.reg(1) & 0xFFFF_FFFF)
        state.rip = to64 ? state.reg(2) : state.reg(2) & 0xFFFF_FFFF
        return true
    }

    /// 0F 01 F8 SWAPGS: 64-bit mode only (#UD elsewhere), CPL 0 (#GP(0)).
    mutating func executeSwapGS(_ insn: inout Instruction) -> Bool {
        guard insn.mode64 else { return undefined() }
        guard state.privilegeLevel() == 0 else { return fault(.gp, errorCode: 0) }
        let base = state.gs.base
        state.gs.base = state.msrs.kernelGSBase
        state.msrs.kernelGSBase = base
        state.rip = insn.nextRIP
        return true
    }
}
