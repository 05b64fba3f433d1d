import GuestMemory
import KVM
import LinuxBoot
import Testing
@testable import VMM

/// The 64-bit boot state, applied through the KVM API and run on the host:
/// the code at the entry point reads through RSI with paging on, and the
/// vCPU reports the long-mode state the boot protocol asks for.
@Suite(.enabled(if: HostKVM.isAvailable)) struct LinuxBootStateTests {
    static let stubAddress = 0xf00
    static let stubPort: UInt16 = 0xf0
    static let entry: UInt64 = 0x10_0200
    static let zeroPage: UInt64 = 0x7000

    @Test func bootStateEntersLongModeWithZeroPageInRSI() throws {
        let memory = try GuestMemoryRegion(size: 4 << 20)
        try memory.write([0xe6, UInt8(Self.stubPort)], at: Self.stubAddress)  // out 0xf0, al
        try memory.store(UInt8(0xab), at: Int(Self.zeroPage) + 0x210)
        try memory.write([
            0x8a, 0x86, 0x10, 0x02, 0x00, 0x00,  // mov al, [rsi + 0x210]
            0xe6, 0x10,  // out 0x10, al
            0x8c, 0xc8,  // mov eax, cs
            0xe6, 0x11,  // out 0x11, al
            0x50, 0x5b,  // push rax; pop rbx: the stack works
            0x88, 0xd8,  // mov al, bl
            0xe6, 0x12,  // out 0x12, al
        ], at: Int(Self.entry))
        let state = try BootPageTables.write(into: memory, entryPoint: Self.entry, zeroPage: Self.zeroPage)

        let hypervisor = try Hypervisor(accelerator: .host)
        let vm = try hypervisor.createVM()
        try vm.setMemoryRegion(slot: 0, guestAddress: 0, region: memory)
        let vcpu = try vm.createVCPU(id: 0)
        try vcpu.setCPUID(hypervisor.supportedCPUID())
        let warmUpExit = try vcpu.warmUp(at: UInt64(Self.stubAddress), port: Self.stubPort)
        try #require(warmUpExit == nil, "the warm-up run did not reach its out")

        try vcpu.applyBootState(state)
        var outputs: [UInt16: UInt64] = [:]
        for _ in 0..<3 {
            let exit = try vcpu.run()
            guard case .io(let io) = exit, io.direction == .out else {
                Issue.record("unexpected exit \(exit)")
                return
            }
            outputs[io.port] = UInt64(io.value)
        }
        #expect(outputs == [0x10: 0xab, 0x11: 0x10, 0x12: 0x10])
        let after = try vcpu.specialRegisters()
        #expect(after.efer & 0x500 == 0x500)
        #expect(after.cs.l && after.cs.selector == 0x10)
        #expect(after.ss.selector == 0x18)
        #expect(after.cr3 == 0x9000)
        #expect(try vcpu.registers().rsi == Self.zeroPage)
    }
}
