import CLinuxKVM
import SystemPackage

// The vCPU's state requests: registers, FPU and XSAVE, MSRs, CPUID, the local
// APIC, pending events, debugging and translation, and event injection.
//
// On the host, state a vCPU is given before its first KVM_RUN can be lost
// (kvm_pvm loads some of it at first entry): a VMM that sets up a vCPU
// should run it once, or set its state again after the first run.
extension VCPU {
    // MARK: Registers

    /// The general-purpose registers, RIP and RFLAGS. The ioctl is KVM_GET_REGS.
    public func registers() throws(KVMError) -> Registers {
        Registers(try handle.get(.getRegs, kvm_regs.self))
    }

    /// Sets the general-purpose registers, RIP and RFLAGS. The ioctl is KVM_SET_REGS.
    public func setRegisters(_ registers: Registers) throws(KVMError) {
        var regs = registers.kernelValue
        try handle.call(.setRegs, &regs, context: "vCPU \(id)")
    }

    /// Segments, descriptor tables, control registers, EFER and the APIC base. The ioctl is KVM_GET_SREGS.
    public func specialRegisters() throws(KVMError) -> SpecialRegisters {
        SpecialRegisters(try handle.get(.getSregs, kvm_sregs.self))
    }

    /// Sets segments, descriptor tables, control registers, EFER and the APIC
    /// base. KVM refuses (EINVAL) combinations the CPU would, such as CR0.PG
    /// without CR0.PE, or EFER.LME with paging but not CR4.PAE. The ioctl is KVM_SET_SREGS.
    public func setSpecialRegisters(_ registers: SpecialRegisters) throws(KVMError) {
        guard registers.interruptBitmap.count == 4 else {
            throw KVMError(errno: .invalidArgument, request: .setSregs,
                           message: "the interrupt bitmap has \(registers.interruptBitmap.count) words, not 4")
        }
        var sregs = registers.kernelValue
        try handle.call(.setSregs, &sregs, context: "vCPU \(id)")
    }

    // MARK: FPU, XSAVE, XCRs

    /// The x87 and SSE state. The ioctl is KVM_GET_FPU.
    public func fpu() throws(KVMError) -> FPUState {
        FPUState(try handle.get(.getFPU, kvm_fpu.self))
    }

    /// Sets the x87 and SSE state. The ioctl is KVM_SET_FPU.
    public func setFPU(_ state: FPUState) throws(KVMError) {
        guard state.fpr.count == 8, state.xmm.count == 16 else {
            throw KVMError(errno: .invalidArgument, request: .setFPU,
                           message: "the FPU state has \(state.fpr.count) x87 registers and \(state.xmm.count) XMM registers, not 8 and 16")
        }
        var fpu = state.kernelValue
        try handle.call(.setFPU, &fpu, context: "vCPU \(id)")
    }

    /// The XSAVE area. Fails with EINVAL where the guest's XSAVE state is
    /// larger than 4096 bytes (dynamic features such as AMX enabled), which
    /// needs KVM_GET_XSAVE2. The ioctl is KVM_GET_XSAVE.
    public func xsave() throws(KVMError) -> XSaveArea {
        XSaveArea(try handle.get(.getXsave, kvm_xsave.self))
    }

    /// Loads the XSAVE area. The ioctl is KVM_SET_XSAVE.
    public func setXSave(_ area: XSaveArea) throws(KVMError) {
        guard area.region.count == XSaveArea.size / 4 else {
            throw KVMError(errno: .invalidArgument, request: .setXsave,
                           message: "the XSAVE area has \(area.region.count) words, not \(XSaveArea.size / 4)")
        }
        // kvm_xsave is 4 KiB: keep it off the stack.
        let storage = UnsafeMutablePointer<kvm_xsave>.allocate(capacity: 1)
        defer { storage.deallocate() }
        storage.initialize(to: area.kernelValue)
        try handle.call(.setXsave, UnsafeMutableRawPointer(storage), context: "vCPU \(id)")
    }

    /// The extended control registers (XCR0). The ioctl is KVM_GET_XCRS.
    public func extendedControlRegisters() throws(KVMError) -> [ExtendedControlRegister] {
        let xcrs = try handle.get(.getXcrs, kvm_xcrs.self)
        let count = min(Int(xcrs.nr_xcrs), ExtendedControlRegister.maximumCount)
        return CArray.elements(of: xcrs.xcrs, as: kvm_xcr.self).prefix(count)
            .map { ExtendedControlRegister(index: $0.xcr, value: $0.value) }
    }

    /// Sets extended control registers. KVM refuses (EINVAL) an XCR0 with
    /// components the guest's CPUID does not offer, so set CPUID first. The ioctl is KVM_SET_XCRS.
    public func setExtendedControlRegisters(_ registers: [ExtendedControlRegister]) throws(KVMError) {
        guard registers.count <= ExtendedControlRegister.maximumCount else {
            throw KVMError(errno: .invalidArgument, request: .setXcrs,
                           message: "\(registers.count) XCRs, more than the \(ExtendedControlRegister.maximumCount) one request holds")
        }
        var xcrs = kvm_xcrs()
        xcrs.nr_xcrs = UInt32(registers.count)
        CArray.store(registers.map { kvm_xcr(xcr: $0.index, reserved: 0, value: $0.value) }, into: &xcrs.xcrs)
        try handle.call(.setXcrs, &xcrs, context: "vCPU \(id)")
    }

    // MARK: MSRs

    /// Reads the MSRs `indices`, in order. KVM stops at the first MSR it
    /// cannot read; that is an error here naming the MSR (use `readMSRs` to
    /// get what was readable). The ioctl is KVM_GET_MSRS.
    public func msrs(_ indices: [UInt32]) throws(KVMError) -> [MSREntry] {
        let entries = try getMSRs(indices)
        guard entries.count == indices.count else {
            throw KVMError(errno: .invalidArgument, request: .getMSRs,
                           message: "vCPU \(id): MSR \(hex(indices[entries.count])) is not readable (read \(entries.count) of \(indices.count) MSRs before it)")
        }
        return entries
    }

    /// Reads what it can of the MSRs `indices`: the readable ones in order,
    /// and the indices KVM refused. KVM stops at the first MSR it cannot
    /// read, so this asks again for the rest after each one. The ioctl is KVM_GET_MSRS.
    public func readMSRs(_ indices: [UInt32]) throws(KVMError) -> MSRReading {
        var reading = MSRReading(entries: [], unreadable: [])
        var remaining = indices[...]
        while !remaining.isEmpty {
            let entries = try getMSRs(Array(remaining))
            reading.entries += entries
            remaining = remaining.dropFirst(entries.count)
            if let refused = remaining.first {
                reading.unreadable.append(refused)
                remaining = remaining.dropFirst()
            }
        }
        return reading
    }

    /// The MSRs KVM read: a prefix of `indices`, ending before the first it refused.
    private func getMSRs(_ indices: [UInt32]) throws(KVMError) -> [MSREntry] {
        let buffer = FlexibleArrayBuffer<kvm_msrs, kvm_msr_entry>(capacity: indices.count)
        buffer.header.pointee.nmsrs = UInt32(indices.count)
        for (slot, index) in indices.enumerated() {
            buffer.entries[slot] = kvm_msr_entry(index: index, reserved: 0, data: 0)
        }
        let read = try handle.call(.getMSRs, buffer.raw, context: "vCPU \(id)")
        let count = min(Int(read), indices.count)
        return UnsafeBufferPointer(start: buffer.entries, count: count).map(MSREntry.init)
    }

    /// Writes the MSRs `entries`, in order. KVM stops at the first MSR it
    /// refuses (unknown, or a value it rejects); that is an error naming the
    /// MSR, with the ones before it written. The ioctl is KVM_SET_MSRS.
    public func setMSRs(_ entries: [MSREntry]) throws(KVMError) {
        let buffer = FlexibleArrayBuffer<kvm_msrs, kvm_msr_entry>(capacity: entries.count)
        buffer.header.pointee.nmsrs = UInt32(entries.count)
        for (slot, entry) in entries.enumerated() {
            buffer.entries[slot] = entry.kernelValue
        }
        let written = Int(try handle.call(.setMSRs, buffer.raw, context: "vCPU \(id)"))
        guard written >= entries.count else {
            let refused = entries[written]
            throw KVMError(errno: .invalidArgument, request: .setMSRs,
                           message: "vCPU \(id): MSR \(hex(refused.index)) refused the value \(hex(refused.data)) (wrote \(written) of \(entries.count) MSRs before it)")
        }
    }

    // MARK: CPUID

    /// Sets the CPUID leaves the guest sees. After the vCPU's first run KVM
    /// takes only the table it already has (EINVAL otherwise). The ioctl is KVM_SET_CPUID2.
    public func setCPUID(_ entries: [CPUIDEntry]) throws(KVMError) {
        let buffer = FlexibleArrayBuffer<kvm_cpuid2, kvm_cpuid_entry2>(capacity: entries.count)
        buffer.header.pointee.nent = UInt32(entries.count)
        for (slot, entry) in entries.enumerated() {
            buffer.entries[slot] = entry.kernelValue
        }
        try handle.call(.setCPUID2, buffer.raw, context: "vCPU \(id), \(entries.count) leaves (after the first KVM_RUN only the same table is accepted)")
    }

    /// The CPUID leaves the guest sees, as KVM keeps them: it adjusts some
    /// bits from the vCPU's state (OSXSAVE, the APIC bit, leaf 0xD's XSAVE
    /// size), and kvm_pvm changes leaves 1, 7 and 0xD further. The ioctl is KVM_GET_CPUID2.
    public func cpuid() throws(KVMError) -> [CPUIDEntry] {
        try CPUIDEntry.fetch(from: handle, request: .getCPUID2)
    }

    // MARK: Local APIC

    /// The in-kernel local APIC's registers; the VM needs an in-kernel
    /// irqchip (EINVAL without one). The ioctl is KVM_GET_LAPIC.
    public func lapic() throws(KVMError) -> LAPICState {
        var state = kvm_lapic_state()
        try handle.call(.getLAPIC, &state, context: "vCPU \(id) (the local APIC is in the kernel only with KVM_CREATE_IRQCHIP)")
        return LAPICState(state)
    }

    /// Loads the in-kernel local APIC's registers. The ioctl is KVM_SET_LAPIC.
    public func setLAPIC(_ state: LAPICState) throws(KVMError) {
        guard state.bytes.count == LAPICState.size else {
            throw KVMError(errno: .invalidArgument, request: .setLAPIC,
                           message: "the LAPIC page has \(state.bytes.count) bytes, not \(LAPICState.size)")
        }
        var lapic = state.kernelValue
        try handle.call(.setLAPIC, &lapic, context: "vCPU \(id) (the local APIC is in the kernel only with KVM_CREATE_IRQCHIP)")
    }

    // MARK: Multiprocessing state

    /// The vCPU's multiprocessing state. The ioctl is KVM_GET_MP_STATE.
    public func mpState() throws(KVMError) -> MPState {
        var state = kvm_mp_state()
        try handle.call(.getMPState, &state, context: "vCPU \(id)")
        return MPState(rawValue: state.mp_state)
    }

    /// Sets the multiprocessing state. Without an in-kernel irqchip only
    /// `.runnable` is accepted. The ioctl is KVM_SET_MP_STATE.
    public func setMPState(_ state: MPState) throws(KVMError) {
        var value = kvm_mp_state(mp_state: state.rawValue)
        try handle.call(.setMPState, &value, context: "vCPU \(id), state \(state)")
    }

    // MARK: Pending events

    /// The exceptions, interrupts, NMIs and SMIs KVM holds for the vCPU. The ioctl is KVM_GET_VCPU_EVENTS.
    public func events() throws(KVMError) -> VCPUEvents {
        VCPUEvents(try handle.get(.getVCPUEvents, kvm_vcpu_events.self))
    }

    /// Restores pending events; parts whose `flags` bit is clear are left as
    /// they are. The ioctl is KVM_SET_VCPU_EVENTS.
    public func setEvents(_ events: VCPUEvents) throws(KVMError) {
        var value = events.kernelValue
        try handle.call(.setVCPUEvents, &value, context: "vCPU \(id)")
    }

    // MARK: Debugging

    /// The guest's debug registers DR0-DR3, DR6 and DR7. The ioctl is KVM_GET_DEBUGREGS.
    public func debugRegisters() throws(KVMError) -> DebugRegisters {
        DebugRegisters(try handle.get(.getDebugregs, kvm_debugregs.self))
    }

    /// Sets the guest's debug registers. KVM refuses (EINVAL) DR6 or DR7 with
    /// bits above 31 set, and non-zero flags. The ioctl is KVM_SET_DEBUGREGS.
    public func setDebugRegisters(_ registers: DebugRegisters) throws(KVMError) {
        guard registers.db.count == 4 else {
            throw KVMError(errno: .invalidArgument, request: .setDebugregs,
                           message: "\(registers.db.count) breakpoint addresses, not 4 (DR0-DR3)")
        }
        var value = registers.kernelValue
        try handle.call(.setDebugregs, &value, context: "vCPU \(id)")
    }

    /// Turns host debugging of the guest on or off: single-step, INT3 and
    /// hardware breakpoints then stop `run()` with `.debug`, and may queue a
    /// #DB or #BP for the guest. (On kvm_pvm only code its emulator runs, at
    /// CPL 0 and in real mode, is stepped, and INT3 is never intercepted.)
    /// The ioctl is KVM_SET_GUEST_DEBUG.
    public func setGuestDebug(_ options: GuestDebug) throws(KVMError) {
        guard var debug = options.kernelValue else {
            throw KVMError(errno: .invalidArgument, request: .setGuestDebug,
                           message: "\(options.hardwareBreakpoints.count) hardware breakpoints; x86 has \(GuestDebug.maximumHardwareBreakpoints)")
        }
        try handle.call(.setGuestDebug, &debug, context: "vCPU \(id)")
    }

    // MARK: Translation

    /// Translates a guest linear address through the vCPU's present paging
    /// mode (identity in real mode and without paging). The ioctl is KVM_TRANSLATE.
    public func translate(_ linearAddress: UInt64) throws(KVMError) -> Translation {
        var translation = kvm_translation()
        translation.linear_address = linearAddress
        try handle.call(.translate, &translation, context: "vCPU \(id), linear address \(hex(linearAddress))")
        return Translation(translation)
    }

    // MARK: Event injection

    /// Queues external interrupt `vector` for the guest, taken when it can
    /// take interrupts (see `readyForInterruptInjection`). Only for a VM
    /// without an in-kernel irqchip, where it gives ENXIO. The ioctl is KVM_INTERRUPT.
    public func injectInterrupt(vector: UInt8) throws(KVMError) {
        var interrupt = kvm_interrupt(irq: UInt32(vector))
        try handle.call(.interrupt, &interrupt, context: "vCPU \(id), vector \(vector) (KVM_INTERRUPT is for VMs without an in-kernel irqchip)")
    }

    /// Queues a non-maskable interrupt for the guest. The ioctl is KVM_NMI.
    public func injectNMI() throws(KVMError) {
        try handle.call(.nmi, value: 0, context: "vCPU \(id)")
    }
}

private func hex(_ value: some BinaryInteger) -> String {
    "0x" + String(value, radix: 16)
}
