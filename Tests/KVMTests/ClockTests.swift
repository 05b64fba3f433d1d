import Testing
@testable import KVM

@Suite("The VM clock on the host's /dev/kvm", .enabled(if: HostKVM.isAvailable))
struct ClockTests {
    @Test func clockAdvancesFromTheValueSet() throws {
        let vm = try HostKVM.hypervisor().createVM()
        try vm.setClock(5_000_000_000)
        let first = try vm.clock().clock
        #expect(first >= 5_000_000_000)
        #expect(first < 5_000_000_000 + 60_000_000_000, "the clock ran a minute in one call")
        let second = try vm.clock().clock
        #expect(second >= first)
    }

    @Test func clockCanBeSetBackwards() throws {
        let vm = try HostKVM.hypervisor().createVM()
        try vm.setClock(10_000_000_000)
        try vm.setClock(1_000)
        #expect(try vm.clock().clock < 10_000_000_000)
    }

    @Test func errorReasonNamesTheMissingIrqchip() throws {
        let vm = try HostKVM.hypervisor().createVM()
        let error = try #require(throws: KVMError.self) { try vm.setIRQLine(4, level: true) }
        #expect(error.errno == .noSuchAddressOrDevice)
        #expect(error.message.contains("irqchip"))
    }
}
