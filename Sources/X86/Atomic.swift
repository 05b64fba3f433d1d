// LOCK. A lockable instruction with a LOCK prefix, and XCHG with a memory
// operand (always locked), is atomic with respect to every other vCPU
// thread's accesses to the same memory, their plain stores included: a
// spinlock is released by a plain store while another CPU spins with LOCK
// CMPXCHG, and a read-then-write emulation of the CMPXCHG could write the
// old value back over that store. So the operation is one host atomic on
// the operand's host address: a compare-exchange loop around the
// instruction's own arithmetic.
//
// What a host atomic cannot reach runs the ordinary read-then-write path
// under one process-wide lock instead: an operand in MMIO or in a read-only
// slot (whose writes are exits), and one that crosses a page or a host cache
// line. Split locks are slow on the host at best (a bus lock) and, with
// Linux's split-lock detection, throttle or kill the process; guests do not
// rely on them. The lock keeps these atomic among locked instructions of
// every vCPU; against another thread's plain store to the same bytes, only
// an update that leaves the value unchanged (a failing CMPXCHG) is safe, as
// it is not written back.

import CX86Atomics

/// Where a locked operand lives.
enum LockedOperand {
    /// RAM inside one host cache line: one host atomic does the operation.
    case host(UnsafeMutableRawPointer)
    /// The ordinary path at this linear address, under the process-wide lock.
    case serialized(UInt64)
}

extension X86CPU {
    /// Resolves the `size`-byte operand of a locked instruction at
    /// `segment:offset` with the checks of a write (a locked access is one):
    /// the segment's type and limit (or the canonical rule), paging
    /// permissions, the A and D bits, the dirty log, read-only slots.
    /// Nil after storing a fault.
    mutating func lockedOperand(segment: Int, offset: UInt64, size: Int) -> LockedOperand? {
        guard let address = checkedLinear(segment, offset, size: size, write: true) else { return nil }
        if (address & 0xFFF) + UInt64(size) > 0x1000 { return .serialized(address) }
        guard let physical = translate(address, .write) else { return nil }
        guard let host = hostPointer(physical, size: size, write: true) else { return .serialized(address) }
        let hostAddress = UInt(bitPattern: host)
        if (hostAddress & 63) + UInt(size) > 64 { return .serialized(address) }
        #if !arch(x86_64)
        // Unaligned atomics fault on other hosts.
        if hostAddress & UInt(size - 1) != 0 { return .serialized(address) }
        #endif
        return .host(host)
    }

    /// Replaces the operand's value `old` by `update(old)` in one atomic
    /// step, calling `update` again when another thread changed the value
    /// in between (with the flags as they were before the instruction, so
    /// that ADC and SBB see their carry). Returns the `old` that was
    /// replaced, whose flags `update` left, or nil after storing a fault or
    /// exit. `update` may change the flags and nothing else.
    mutating func lockedUpdate(_ operand: LockedOperand, size: Int,
                               _ update: (inout X86CPU, UInt64) -> UInt64) -> UInt64? {
        let flags = state.flags
        switch operand {
        case .host(let host):
            var old = cx86_load(host, Int32(size))
            while true {
                state.flags = flags
                let new = update(&self, old) & sizeMask(size)
                if cx86_compare_exchange(host, &old, new, Int32(size)) { return old }
            }
        case .serialized(let address):
            cx86_split_lock_acquire()
            defer { cx86_split_lock_release() }
            // Write permission first: the locked access is a write even when
            // it leaves the value as it was.
            guard let inRAM = probeWrite(address, size: size), let old = readLinear(address, size: size) else { return nil }
            let new = update(&self, old) & sizeMask(size)
            // An unchanged value in RAM is not written back, so that a failing
            // CMPXCHG cannot undo another thread's plain store in between; MMIO
            // still sees the write cycle, as KVM gives it.
            if new == old && inRAM { return old }
            guard writeLinear(address, new, size: size) else {
                state.flags = flags
                return nil
            }
            return old
        }
    }

    /// Translates the pages of a `size`-byte write at `address` (storing the
    /// fault if one fails), and tells whether all of it is writable RAM.
    mutating func probeWrite(_ address: UInt64, size: Int) -> Bool? {
        let first = min(size, Int(0x1000 - (address & 0xFFF)))
        guard let low = translate(address, .write) else { return nil }
        var inRAM = hostPointer(low, size: first, write: true) != nil
        if first < size {
            guard let high = translate(address &+ UInt64(first), .write) else { return nil }
            inRAM = inRAM && hostPointer(high, size: size - first, write: true) != nil
        }
        return inRAM
    }

    /// A read-modify-write of the memory operand at `offset` (the
    /// instruction's own unless given): atomic with LOCK, else a read and a
    /// write. Returns the old value, as `lockedUpdate`.
    mutating func readModifyWrite(_ insn: Instruction, offset: UInt64? = nil, size: Int,
                                  _ update: (inout X86CPU, UInt64) -> UInt64) -> UInt64? {
        let address = offset ?? insn.offset
        if insn.lock {
            guard let operand = lockedOperand(segment: insn.segment, offset: address, size: size) else { return nil }
            return lockedUpdate(operand, size: size, update)
        }
        let flags = state.flags
        guard let old = readForUpdate(insn.segment, address, size: size) else { return nil }
        let new = update(&self, old)
        guard write(insn.segment, address, new, size: size) else {
            state.flags = flags
            return nil
        }
        return old
    }

    /// The r/m operand of a read-modify-write. A memory operand is read with
    /// the write's checks, as the CPU does: a read-only or absent page faults
    /// with W set in the error code, before the instruction changes anything
    /// (the flags included, which a fault on the later write would leave
    /// changed, and which ADC, SBB, RCL and RCR read again when restarted).
    @inline(__always)
    mutating func readOperandForUpdate(_ insn: Instruction, size: Int) -> UInt64? {
        if insn.mod == 3 { return state.read(insn.rm, size: size, legacyHighBytes: insn.legacyHighBytes) }
        return readForUpdate(insn.segment, insn.offset, size: size)
    }

    /// A lockable instruction with LOCK (`isLockable` holds), or XCHG with
    /// memory: each one's read-modify-write as one atomic update.
    mutating func executeLocked(_ insn: inout Instruction) -> Bool {
        let op = insn.opcode
        switch op {
        case 0x00...0x3F:  // op Eb,Gb / Ev,Gv
            let size = op & 1 == 0 ? 1 : insn.operandSize
            let source = readRegister(insn, size: size)
            let operation = op >> 3
            guard readModifyWrite(insn, size: size, { cpu, old in cpu.alu(operation, old, source, size: size) }) != nil
            else { return false }
        case 0x80...0x83:
            guard op != 0x82 || !insn.mode64 else { return undefined() }
            let size = op & 1 == 0 ? 1 : insn.operandSize
            let source = signExtend(insn.immediate, size: op == 0x81 ? min(size, 4) : 1)
            let operation = insn.reg & 7
            guard readModifyWrite(insn, size: size, { cpu, old in cpu.alu(operation, old, source, size: size) }) != nil
            else { return false }
        case 0x86, 0x87:
            let size = op == 0x86 ? 1 : insn.operandSize
            let source = readRegister(insn, size: size)
            guard let operand = lockedOperand(segment: insn.segment, offset: insn.offset, size: size),
                  let old = lockedUpdate(operand, size: size, { _, _ in source }) else { return false }
            writeRegister(insn, old, size: size)
        case 0xF6, 0xF7:  // NOT, NEG
            let size = op == 0xF6 ? 1 : insn.operandSize
            let negate = insn.reg & 7 == 3
            guard readModifyWrite(insn, size: size, { cpu, old in
                guard negate else { return ~old & sizeMask(size) }
                let result = (0 &- old) & sizeMask(size)
                cpu.state.flags.record(.sub, size: size, dst: 0, src: old, result: result)
                return result
            }) != nil else { return false }
        case 0xFE, 0xFF:  // INC, DEC
            let size = op == 0xFE ? 1 : insn.operandSize
            let decrement = insn.reg & 7 == 1
            guard readModifyWrite(insn, size: size, { cpu, old in cpu.incDec(old, size: size, decrement: decrement) }) != nil
            else { return false }
        case 0x1AB, 0x1B3, 0x1BB, 0x1BA:
            guard executeLockedBitTest(&insn) else { return false }
        case 0x1B0, 0x1B1:
            guard executeCompareExchange(&insn) else { return false }
        case 0x1C0, 0x1C1:
            guard executeExchangeAdd(&insn) else { return false }
        case 0x1C7:
            guard executeGroup9(&insn) else { return false }
        default:
            return undefined()
        }
        state.rip = insn.nextRIP
        return true
    }

    /// BTS BTR BTC with a memory operand: the bit offset of the register
    /// form reaches beyond the operand, as in `executeBitTest`.
    mutating func executeLockedBitTest(_ insn: inout Instruction) -> Bool {
        let size = insn.operandSize
        let (operation, bit, offset) = bitTestOperand(insn)
        let mask: UInt64 = 1 << bit
        return readModifyWrite(insn, offset: offset, size: size) { cpu, old in
            let flags = cpu.state.flags.materialized
            cpu.state.flags.set(arithmetic: old & mask != 0 ? flags | RFLAGS.cf : flags & ~RFLAGS.cf)
            switch operation {
            case 1: return old | mask
            case 2: return old & ~mask
            default: return old ^ mask
            }
        } != nil
    }
}
