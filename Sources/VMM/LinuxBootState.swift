import KVM
import LinuxBoot

extension Segment {
    init(_ segment: BootSegment) {
        self.init(base: segment.base, limit: segment.limit, selector: segment.selector, type: segment.type,
                  present: segment.present, dpl: segment.dpl, db: segment.db, s: segment.s,
                  l: segment.l, g: segment.g)
    }
}

extension VCPU {
    /// Loads the 64-bit boot protocol's entry state: long mode on the
    /// loader's page tables and GDT, RIP at the kernel's entry, RSI the zero
    /// page. The ioctls are KVM_GET_SREGS, KVM_SET_SREGS and KVM_SET_REGS.
    public func applyBootState(_ state: BootCPUState) throws(KVMError) {
        var special = try specialRegisters()
        special.cs = Segment(state.code)
        let data = Segment(state.data)
        special.ds = data
        special.es = data
        special.fs = data
        special.gs = data
        special.ss = data
        special.tr = Segment(state.taskRegister)
        special.gdt = DescriptorTable(base: state.gdtBase, limit: state.gdtLimit)
        special.idt = DescriptorTable(base: state.idtBase, limit: state.idtLimit)
        special.cr0 = state.cr0
        special.cr3 = state.cr3
        special.cr4 = state.cr4
        special.efer = state.efer
        try setSpecialRegisters(special)

        var registers = Registers()
        registers.rip = state.rip
        registers.rsi = state.rsi
        registers.rsp = state.rsp
        registers.rbp = state.rsp
        registers.rflags = state.rflags
        try setRegisters(registers)
    }
}
