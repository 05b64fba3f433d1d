// CMPXCHG, XADD, CMPXCHG8B and CMPXCHG16B, with or without LOCK (see
// Atomic.swift): the memory forms go through `readModifyWrite`.

import CX86Atomics

extension X86CPU {
    /// 0F B0/B1 CMPXCHG Eb/Ev, Gb/Gv: compares the accumulator with the
    /// destination (flags as CMP accumulator, destination); when equal the
    /// destination takes the source, otherwise the accumulator takes the
    /// destination. A memory destination is written either way (its own
    /// value back on failure, the CPU's write cycle); a register destination
    /// only on success, so that a failing 32-bit form leaves its upper half
    /// alone while the accumulator's is cleared (as the CPU does, unlike
    /// KVM's emulator and QEMU 5, which zero-extend the destination too).
    mutating func executeCompareExchange(_ insn: inout Instruction) -> Bool {
        let size = insn.opcode == 0x1B0 ? 1 : insn.operandSize
        let accumulator = state.read(0, size: size, legacyHighBytes: false)
        let source = readRegister(insn, size: size)
        let old: UInt64
        if insn.isMemory {
            guard let value = readModifyWrite(insn, size: size, { cpu, value in
                cpu.state.flags.record(.sub, size: size, dst: accumulator, src: value,
                                       result: (accumulator &- value) & sizeMask(size))
                return value == accumulator ? source : value
            }) else { return false }
            old = value
        } else {
            old = state.read(insn.rm, size: size, legacyHighBytes: insn.legacyHighBytes)
            state.flags.record(.sub, size: size, dst: accumulator, src: old, result: (accumulator &- old) & sizeMask(size))
            if old == accumulator { state.write(insn.rm, source, size: size, legacyHighBytes: insn.legacyHighBytes) }
        }
        if old != accumulator { state.write(0, old, size: size, legacyHighBytes: false) }
        return true
    }

    /// 0F C0/C1 XADD Eb/Ev, Gb/Gv: the destination takes the sum (flags as
    /// ADD), the source register the destination's old value; with one
    /// register as both, the sum is written last and wins.
    mutating func executeExchangeAdd(_ insn: inout Instruction) -> Bool {
        let size = insn.opcode == 0x1C0 ? 1 : insn.operandSize
        let source = readRegister(insn, size: size)
        if insn.isMemory {
            guard let old = readModifyWrite(insn, size: size, { cpu, value in cpu.alu(0, value, source, size: size) })
            else { return false }
            writeRegister(insn, old, size: size)
            return true
        }
        let old = state.read(insn.rm, size: size, legacyHighBytes: insn.legacyHighBytes)
        let sum = alu(0, old, source, size: size)
        writeRegister(insn, old, size: size)
        state.write(insn.rm, sum, size: size, legacyHighBytes: insn.legacyHighBytes)
        return true
    }

    /// 0F C7 (group 9): /1 CMPXCHG8B m64 compares EDX:EAX with the operand;
    /// equal: ZF = 1 and the operand takes ECX:EBX; else ZF = 0 and EDX:EAX
    /// take the operand. With REX.W it is CMPXCHG16B m128 on RDX:RAX and
    /// RCX:RBX, whose operand must be 16-byte aligned (#GP(0)). Only ZF
    /// changes. A register operand, and the other members of the group (no
    /// RDRAND or RDSEED is advertised), are #UD.
    mutating func executeGroup9(_ insn: inout Instruction) -> Bool {
        guard insn.reg & 7 == 1, insn.isMemory else { return undefined() }
        let equal: Bool
        if insn.operandSize == 8 {
            guard let result = compareExchange16(insn) else { return false }
            equal = result
        } else {
            let expected = (state.reg(2) & 0xFFFF_FFFF) << 32 | (state.reg(0) & 0xFFFF_FFFF)
            let desired = (state.reg(1) & 0xFFFF_FFFF) << 32 | (state.reg(3) & 0xFFFF_FFFF)
            guard let old = readModifyWrite(insn, size: 8, { _, value in value == expected ? desired : value })
            else { return false }
            equal = old == expected
            if !equal {
                state.write(0, old & 0xFFFF_FFFF, size: 4, legacyHighBytes: false)
                state.write(2, old >> 32, size: 4, legacyHighBytes: false)
            }
        }
        let flags = state.flags.materialized
        state.flags.set(arithmetic: equal ? flags | RFLAGS.zf : flags & ~RFLAGS.zf)
        return true
    }

    /// CMPXCHG16B's memory access, atomic with or without LOCK (the operand
    /// is aligned, so one host atomic always reaches it). Outside RAM it is
    /// an emulation failure, as in KVM, whose emulator does not do it.
    /// Returns whether the comparison held, or nil after storing a fault.
    mutating func compareExchange16(_ insn: Instruction) -> Bool? {
        guard let address = checkedLinear(insn.segment, insn.offset, size: 16, write: true) else { return nil }
        guard address & 0xF == 0 else {
            _ = fault(.gp, errorCode: 0)
            return nil
        }
        guard let physical = translate(address, .write) else { return nil }
        guard let host = hostPointer(physical, size: 16, write: true) else {
            pending = .emulationFailure(address: physical)
            return nil
        }
        var low = state.reg(0), high = state.reg(2)
        if cx86_compare_exchange16(host, &low, &high, state.reg(3), state.reg(1)) { return true }
        state.setReg(0, low)
        state.setReg(2, high)
        return false
    }
}
