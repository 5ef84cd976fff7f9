# Runs first at every boot (frozen into the firmware). The verified-boot step
# lives here: see lib/ironclad/ironclad/ for what it checks.
print("ironclad: boot")
