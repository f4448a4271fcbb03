#!/usr/bin/env python3
"""Translates English `systeminfo` output into the other display languages
Windows ships (field names, N/A, "Build", "Installed." phrases and the local
date formats), so the relay's parser can be tested on non-English input made
from the real machines' files.

    translate_systeminfo.py <english dir> <output dir>

writes <output dir>/<lang>/<file> for every *.txt in <english dir>. The
encodings and line endings vary the way real files do: UTF-8 with and
without BOM, UTF-16LE with BOM (PowerShell 5 `>`), CRLF and LF.
The shared data is only read.
"""

import os
import re
import sys

COMMON = [
    "Host Name", "OS Name", "OS Version", "OS Manufacturer", "OS Configuration",
    "OS Build Type", "Registered Owner", "Registered Organization", "Product ID",
    "Original Install Date", "System Boot Time", "System Manufacturer",
    "System Model", "System Type", "Processor(s)", "BIOS Version",
    "Windows Directory", "System Directory", "Boot Device", "System Locale",
    "Input Locale", "Time Zone", "Total Physical Memory",
    "Available Physical Memory", "Virtual Memory: Max Size",
    "Virtual Memory: Available", "Virtual Memory: In Use",
    "Page File Location(s)", "Domain", "Logon Server", "Hotfix(s)",
    "Network Card(s)", "Hyper-V Requirements",
]

# Per language: field names (in COMMON's order), phrases, date order and
# separator, encoding, line ending.
LANGS = {
    "de": dict(
        fields=[
            "Hostname", "Betriebssystemname", "Betriebssystemversion",
            "Betriebssystemhersteller", "Betriebssystemkonfiguration",
            "Betriebssystem-Buildtyp", "Registrierter Benutzer",
            "Registrierte Organisation", "Produkt-ID",
            "Ursprüngliches Installationsdatum", "Systemstartzeit",
            "Systemhersteller", "Systemmodell", "Systemtyp", "Prozessor(en)",
            "BIOS-Version", "Windows-Verzeichnis", "System-Verzeichnis",
            "Startgerät", "Systemgebietsschema", "Eingabegebietsschema",
            "Zeitzone", "Gesamter physischer Speicher",
            "Verfügbarer physischer Speicher",
            "Virtueller Arbeitsspeicher: Maximale Größe",
            "Virtueller Arbeitsspeicher: Verfügbar",
            "Virtueller Arbeitsspeicher: Zurzeit verwendet",
            "Auslagerungsdateipfad(e)", "Domäne", "Anmeldeserver", "Hotfix(es)",
            "Netzwerkkarte(n)", "Hyper-V-Anforderungen",
        ],
        na="Nicht zutreffend", build="Build",
        installed={"Hotfix(s)": "Hotfix(e) installiert.",
                   "Processor(s)": "Prozessor(en) installiert.",
                   "NIC(s)": "Netzwerkadapter installiert."},
        date="{d:02}.{m:02}.{y}", encoding="utf-8", newline="\r\n"),
    "fr": dict(
        fields=[
            "Nom de l’hôte", "Nom du système d’exploitation",
            "Version du système", "Fabricant du système d’exploitation",
            "Configuration du système d’exploitation",
            "Type de version du système d’exploitation",
            "Propriétaire enregistré", "Organisation enregistrée",
            "Identificateur de produit", "Date d’installation originale",
            "Heure de démarrage du système", "Fabricant du système",
            "Modèle du système", "Type du système", "Processeur(s)",
            "Version du BIOS", "Répertoire Windows", "Répertoire système",
            "Périphérique d’amorçage", "Option régionale du système",
            "Paramètres régionaux d’entrée", "Fuseau horaire",
            "Mémoire physique totale", "Mémoire physique disponible",
            "Mémoire virtuelle : taille maximale",
            "Mémoire virtuelle : disponible", "Mémoire virtuelle : en cours d’utilisation",
            "Emplacements des fichiers d’échange", "Domaine",
            "Serveur d’ouverture de session", "Correctif(s)", "Carte(s) réseau",
            "Configuration requise pour Hyper-V",
        ],
        na="N/A", build="version",
        installed={"Hotfix(s)": "Correctif(s) installé(s).",
                   "Processor(s)": "processeur(s) installé(s).",
                   "NIC(s)": "carte(s) réseau installée(s)."},
        date="{d:02}/{m:02}/{y}", encoding="utf-16", newline="\r\n"),
    "es": dict(
        fields=[
            "Nombre de host", "Nombre del sistema operativo",
            "Versión del sistema operativo", "Fabricante del sistema operativo",
            "Configuración del sistema operativo",
            "Tipo de compilación del sistema operativo", "Propiedad de",
            "Organización registrada", "Id. del producto",
            "Fecha de instalación original", "Tiempo de arranque del sistema",
            "Fabricante del sistema", "Modelo el sistema", "Tipo de sistema",
            "Procesador(es)", "Versión del BIOS", "Directorio de Windows",
            "Directorio de sistema", "Dispositivo de arranque",
            "Configuración regional del sistema", "Idioma de entrada",
            "Zona horaria", "Cantidad total de memoria física",
            "Memoria física disponible", "Memoria virtual: tamaño máximo",
            "Memoria virtual: disponible", "Memoria virtual: en uso",
            "Ubicación(es) de archivo de paginación", "Dominio",
            "Servidor de inicio de sesión", "Revisión(es)", "Tarjeta(s) de red",
            "Requisitos de Hyper-V",
        ],
        na="N/D", build="Compilación",
        installed={"Hotfix(s)": "revisión(es) instaladas.",
                   "Processor(s)": "procesadores instalados.",
                   "NIC(s)": "Tarjetas de interfaz de red instaladas."},
        date="{d}/{m}/{y}", encoding="utf-8", newline="\n"),
    "it": dict(
        fields=[
            "Nome host", "Nome SO", "Versione SO", "Produttore SO",
            "Configurazione SO", "Tipo build SO", "Proprietario registrato",
            "Organizzazione registrata", "ID prodotto",
            "Data di installazione originale", "Tempo avvio sistema",
            "Produttore sistema", "Modello sistema", "Tipo sistema",
            "Processore(i)", "Versione BIOS", "Directory Windows",
            "Directory di sistema", "Dispositivo di avvio",
            "Impostazioni locali sistema", "Impostazioni locali di input",
            "Fuso orario", "Memoria fisica totale", "Memoria fisica disponibile",
            "Memoria virtuale: dimensione massima", "Memoria virtuale: disponibile",
            "Memoria virtuale: in uso", "Posizioni file di paging", "Dominio",
            "Server di accesso", "Aggiornamenti rapidi", "Schede di rete",
            "Requisiti Hyper-V",
        ],
        na="N/D", build="Build",
        installed={"Hotfix(s)": "Aggiornamenti rapidi installati.",
                   "Processor(s)": "processore(i) installato(i).",
                   "NIC(s)": "schede di interfaccia di rete installate."},
        date="{d:02}/{m:02}/{y}", encoding="utf-8", newline="\r\n"),
    "pt": dict(
        fields=[
            "Nome do host", "Nome do sistema operacional",
            "Versão do sistema operacional", "Fabricante do sistema operacional",
            "Configuração do SO", "Tipo de compilação do sistema operacional",
            "Proprietário registrado", "Organização registrada",
            "Identificação do produto", "Data da instalação original",
            "Tempo de Inicialização do Sistema", "Fabricante do sistema",
            "Modelo do sistema", "Tipo de sistema", "Processador(es)",
            "Versão do BIOS", "Pasta do Windows", "Pasta do sistema",
            "Inicializar dispositivo", "Localidade do sistema",
            "Localidade de entrada", "Fuso horário", "Memória física total",
            "Memória física disponível", "Memória Virtual: Tamanho Máximo",
            "Memória Virtual: Disponível", "Memória Virtual: Em Uso",
            "Local(is) de arquivo de paginação", "Domínio", "Servidor de Logon",
            "Hotfix(es)", "Placa(s) de Rede", "Requisitos do Hyper-V",
        ],
        na="N/A", build="Compilação",
        installed={"Hotfix(s)": "hotfix(es) instalado(s).",
                   "Processor(s)": "processador(es) instalado(s).",
                   "NIC(s)": "NIC(s) instalado(s)."},
        date="{d:02}/{m:02}/{y}", encoding="utf-8-sig", newline="\n"),
    "nl": dict(
        fields=[
            "Hostnaam", "Besturingssysteemnaam", "Besturingssysteemversie",
            "Fabrikant van besturingssysteem", "Configuratie van besturingssysteem",
            "Type build van besturingssysteem", "Geregistreerde eigenaar",
            "Geregistreerde organisatie", "Product-id",
            "Oorspronkelijke installatiedatum", "Opstarttijd van systeem",
            "Fabrikant van systeem", "Systeemmodel", "Systeemtype",
            "Processor(s)", "BIOS-versie", "Windows-map", "Systeemmap",
            "Opstartapparaat", "Landinstellingen van systeem",
            "Landinstellingen voor invoer", "Tijdzone", "Totaal fysiek geheugen",
            "Beschikbaar fysiek geheugen", "Virtueel geheugen: maximale grootte",
            "Virtueel geheugen: beschikbaar", "Virtueel geheugen: in gebruik",
            "Locatie(s) van wisselbestand", "Domein", "Aanmeldingsserver",
            "Hotfix(es)", "Netwerkkaart(en)", "Hyper-V-vereisten",
        ],
        na="N.v.t.", build="Build",
        installed={"Hotfix(s)": "hotfix(es) geïnstalleerd.",
                   "Processor(s)": "processor(s) geïnstalleerd.",
                   "NIC(s)": "NIC('s) geïnstalleerd."},
        date="{d}-{m}-{y}", encoding="utf-8", newline="\r\n"),
}

US_DATE = re.compile(r"(\d{1,2})/(\d{1,2})/(\d{4})(?:, (\d{1,2}):(\d{2}):(\d{2}) ([AP]M))?")


def local_date(match, fmt):
    month, day, year = int(match.group(1)), int(match.group(2)), int(match.group(3))
    out = fmt.format(d=day, m=month, y=year)
    if match.group(4):
        hour = int(match.group(4)) % 12 + (12 if match.group(7) == "PM" else 0)
        out += ", {:02}:{}:{}".format(hour, match.group(5), match.group(6))
    return out


def translate(text, lang):
    spec = LANGS[lang]
    names = dict(zip(COMMON, spec["fields"]))
    width = max(len(n) for n in spec["fields"]) + 2
    out = []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        key, sep, value = line.partition(":")
        # `Virtual Memory: Max Size:` has a colon in its name.
        if key == "Virtual Memory":
            sub, _, value = value.partition(":")
            key = "Virtual Memory:" + sub
        if sep and key in names:
            value = value.strip()
            if key == "OS Version":
                value = value.replace(" N/A ", " %s " % spec["na"]).replace(
                    " Build ", " %s " % spec["build"])
            if key in ("Original Install Date", "System Boot Time", "BIOS Version"):
                value = US_DATE.sub(lambda m: local_date(m, spec["date"]), value)
            for english, local in spec["installed"].items():
                value = re.sub(r"^(\d+) %s Installed\." % re.escape(english),
                               r"\1 " + local.replace("\\", "\\\\"), value)
            label = names[key] + ":"
            out.append(label.ljust(max(width, len(label) + 1)) + value)
        else:
            out.append(line)
    return spec["newline"].join(out)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, dst = sys.argv[1], sys.argv[2]
    for lang, spec in LANGS.items():
        os.makedirs(os.path.join(dst, lang), exist_ok=True)
        for name in sorted(os.listdir(src)):
            if not name.endswith(".txt"):
                continue
            with open(os.path.join(src, name), encoding="utf-8", errors="replace") as f:
                text = f.read()
            with open(os.path.join(dst, lang, name), "w", encoding=spec["encoding"],
                      newline="") as f:
                f.write(translate(text, lang))


if __name__ == "__main__":
    main()
