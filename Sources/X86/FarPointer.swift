// LDS LES (outside 64-bit mode, where C4 and C5 are VEX) and LSS LFS LGS:
// a far pointer from memory into a segment register and a general register.

extension X86CPU {
    /// C4 LES, C5 LDS, 0F B2 LSS, 0F B4 LFS, 0F B5 LGS Gv, Mp: the offset
    /// (operand size: 2, 4, or 8 with REX.W) then the selector. The segment
    /// register is loaded first, so that its fault leaves the general
    /// register unchanged. A register operand is #UD.
    mutating func executeLoadFarPointer(_ insn: inout Instruction) -> Bool {
        let op = insn.opcode
        guard insn.isMemory, !(insn.mode64 && op < 0x100) else { return undefined() }
        let segment: SegmentRegisterName
        switch op {
        case 0xC4: segment = .es
        case 0xC5: segment = .ds
        case 0x1B2: segment = .ss
        case 0x1B4: segment = .fs
        default: segment = .gs
        }
        let size = insn.operandSize
        guard let offset = read(insn.segment, insn.offset, size: size),
              let selector = read(insn.segment, (insn.offset &+ UInt64(size)) & sizeMask(insn.addressSize), size: 2),
              loadSegment(segment.rawValue, selector: UInt16(truncatingIfNeeded: selector))
        else { return false }
        writeRegister(insn, offset, size: size)
        return true
    }
}
